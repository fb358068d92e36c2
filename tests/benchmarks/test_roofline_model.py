"""The roofline arithmetic on made-up numbers (no compiling)."""

import pytest

from ssrl_jax.benchmarks.roofline_model import (CHIPS, Chip, Cost, Seconds, extrapolate,
                                                rollout_seconds, seconds)

# Round peaks: 100 FLOP/s, 10 B/s of HBM, 1 B/s of ICI.
CHIP = Chip("test", peak_flops=100.0, hbm_bandwidth=10.0, ici_bandwidth=1.0)


def test_a_program_takes_the_larger_of_compute_and_hbm_time_plus_its_collectives():
    compute_bound = seconds(Cost(flops=1000, hbm_bytes=50, ici_bytes=2), CHIP)
    assert compute_bound == Seconds(compute=10, hbm=5, ici=2, total=12)
    assert compute_bound.bound == "compute"
    hbm_bound = seconds(Cost(flops=100, hbm_bytes=50), CHIP)
    assert (hbm_bound.total, hbm_bound.bound) == (5, "HBM")
    assert seconds(Cost(flops=100, hbm_bytes=10, ici_bytes=7), CHIP).bound == "ICI"


def test_seconds_of_several_programs_add_their_maxima_not_the_maximum_of_sums():
    # One compute-bound and one HBM-bound program: 10 + 10, where the summed costs would
    # give max(10 + 1, 1 + 10) = 11.
    a = seconds(Cost(flops=1000, hbm_bytes=10), CHIP)
    b = seconds(Cost(flops=100, hbm_bytes=100), CHIP)
    assert (a + b).total == 20
    assert seconds(Cost(flops=1100, hbm_bytes=110), CHIP).total == 11
    assert (a * 3).total == 30


def test_costs_are_extrapolated_linearly():
    at_0, at_1 = Cost(10, 100, 1), Cost(13, 150, 3)
    assert extrapolate(at_0, at_1, 32) == Cost(10 + 32 * 3, 100 + 32 * 50, 1 + 32 * 2)
    assert at_1 - at_0 == Cost(3, 50, 2)


def test_the_rollout_is_the_prefill_plus_every_decode_step_at_its_own_cache_reads():
    prefill = Cost(flops=500, hbm_bytes=20)
    read = []

    def step_at(slots):                     # a = 100 B, b = 2 B per slot of HBM
        return Cost(flops=10, hbm_bytes=100 + 2 * slots, ici_bytes=1)

    def slots_read(step):                    # a window growing with the step
        read.append(step)
        return 64 + step

    prefill_s, decode_s, decode_cost = rollout_seconds(prefill, step_at, slots_read, 4, CHIP)
    assert read == [0, 1, 2, 3]
    assert prefill_s.total == 5              # compute-bound: 500 / 100
    expected = sum((100 + 2 * (64 + s)) / 10 + 1 for s in range(4))
    assert decode_s.total == pytest.approx(expected)
    assert decode_s.bound == "HBM"
    assert decode_cost == Cost(40, sum(100 + 2 * (64 + s) for s in range(4)), 4)


def test_published_peaks_are_ordered_as_the_chips():
    assert CHIPS["v5p"].peak_flops == 459e12 and CHIPS["v5p"].hbm_bandwidth == 2765e9
    assert CHIPS["v6e"].peak_flops > CHIPS["v5p"].peak_flops > CHIPS["v4"].peak_flops
    assert all(c.ici_bandwidth < c.hbm_bandwidth for c in CHIPS.values())
