"""The roofline arithmetic of a train step: per-chip costs, chip peaks, seconds.

A part of the step that does `flops` FLOPs, moves `hbm_bytes` to and from HBM and sends
`ici_bytes` over the chip-to-chip interconnect takes, on one chip,

    seconds = max(flops / peak_flops, hbm_bytes / hbm_bandwidth) + ici_bytes / ici_bandwidth

(compute and memory traffic overlap; collectives are counted as not overlapped). The
rollout is the prefill plus one such term per decode step; the cost of a step is affine in
the KV-cache slots it reads, cost(w) = a + b w.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip peaks: bf16 FLOP/s, HBM bytes/s, ICI bytes/s."""

    name: str
    peak_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float


# Google Cloud's TPU pages (cloud.google.com/tpu/docs/v5p, /v6e, /v5e, /v4, read
# 2026-12-04): bf16 peak per chip, HBM bandwidth per chip, and the "inter-chip interconnect
# BW" per chip in Gbps, here / 8 (v5p 4800, v6e 3584, v5e 1600 Gbps). The v4 page gives no
# per-chip ICI figure: 6 links of 400 Gbps (TPU v4 paper, ISCA 2023) counted in one
# direction as for the others.
CHIPS = {
    "v5p": Chip("v5p", 459e12, 2765e9, 600e9),
    "v6e": Chip("v6e", 918e12, 1640e9, 448e9),
    "v5e": Chip("v5e", 197e12, 819e9, 200e9),
    "v4": Chip("v4", 275e12, 1200e9, 300e9),
}


@dataclasses.dataclass(frozen=True)
class Cost:
    """Per-chip work of a program: FLOPs, HBM bytes moved, ICI bytes sent or received, and
    for comparison XLA's own "bytes accessed", which also counts on-chip copies
    (`hbm_traffic.py`)."""

    flops: float = 0.0
    hbm_bytes: float = 0.0
    ici_bytes: float = 0.0
    xla_bytes: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(getattr(self, f.name) + getattr(other, f.name)
                      for f in dataclasses.fields(self)))

    def __sub__(self, other: "Cost") -> "Cost":
        return self + other * -1.0

    def __mul__(self, factor: float) -> "Cost":
        return Cost(*(getattr(self, f.name) * factor for f in dataclasses.fields(self)))

    __rmul__ = __mul__


def extrapolate(at_0: Cost, at_1: Cost, n: float) -> Cost:
    """The cost at n of an affine cost known at 0 and 1 (n layers, n cache slots, ...)."""
    return at_0 + (at_1 - at_0) * n


@dataclasses.dataclass(frozen=True)
class Seconds:
    """Roofline seconds of some work, split by what bounds it."""

    compute: float = 0.0   # flops / peak, summed over the programs
    hbm: float = 0.0       # hbm_bytes / bandwidth, summed over the programs
    ici: float = 0.0
    total: float = 0.0     # sum over the programs of max(compute, hbm) + ici

    def __add__(self, other: "Seconds") -> "Seconds":
        return Seconds(self.compute + other.compute, self.hbm + other.hbm,
                       self.ici + other.ici, self.total + other.total)

    def __mul__(self, factor: float) -> "Seconds":
        return Seconds(self.compute * factor, self.hbm * factor, self.ici * factor,
                       self.total * factor)

    @property
    def bound(self) -> str:
        """Which term is largest: "compute", "HBM" or "ICI"."""
        terms = {"compute": self.compute, "HBM": self.hbm, "ICI": self.ici}
        return max(terms, key=terms.get)


def seconds(cost: Cost, chip: Chip) -> Seconds:
    """The roofline time of one program (the formula of the module docstring)."""
    compute, hbm = cost.flops / chip.peak_flops, cost.hbm_bytes / chip.hbm_bandwidth
    ici = cost.ici_bytes / chip.ici_bandwidth
    return Seconds(compute, hbm, ici, max(compute, hbm) + ici)


def decode_costs(step_at: Callable[[int], Cost], slots_read: Callable[[int], int],
                 steps: int) -> Iterable[Cost]:
    """The cost of each decode step s = 0 .. steps-1, reading slots_read(s) cache slots."""
    return (step_at(slots_read(s)) for s in range(steps))


def rollout_seconds(prefill: Cost, step_at: Callable[[int], Cost],
                    slots_read: Callable[[int], int], steps: int, chip: Chip
                    ) -> tuple[Seconds, Seconds, Cost]:
    """(prefill seconds, decode seconds summed over the steps, decode cost summed)."""
    decode, total = Seconds(), Cost()
    for cost in decode_costs(step_at, slots_read, steps):
        decode, total = decode + seconds(cost, chip), total + cost
    return seconds(prefill, chip), decode, total
