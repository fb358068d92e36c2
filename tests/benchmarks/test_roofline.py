"""`bench plan`: roofline seconds of a small config's step from programs libtpu compiles for
v5p:2x2x1 (no chip). Needs the `tpu` extra (CI installs it)."""

import json
import pathlib

import pytest

from tests.benchmarks.libtpu import require_libtpu

require_libtpu()

from ssrl_jax.bench import build_parser  # noqa: E402
from ssrl_jax.benchmarks import roofline  # noqa: E402
from ssrl_jax.benchmarks.roofline_model import Cost  # noqa: E402
from ssrl_jax.cli_errors import UserError  # noqa: E402

SMOKE = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
# The TPU plan's small model (test_tpu_plan.py) with splash attention and remat as shipped:
# 16 responses of 64 prompt + 8 new slots on 2 x 2 chips, 2 micro-batches.
OVERRIDES = ["mesh.fsdp=2", "mesh.tensor=2", "rollout.max_new_tokens=8",
             "data.max_prompt_tokens=64", "model.dtype=bfloat16", "model.attention=splash",
             "model.remat=full", "grpo.num_micro_batches=2",
             "model.random.hidden_size=96", "model.random.intermediate_size=224",
             "model.random.num_heads=6", "model.random.head_dim=16"]
CHIPS = 4


@pytest.fixture(scope="module")
def costs():
    return roofline.measure(SMOKE, OVERRIDES, topology="v5p:2x2x1")


HEAD = 1024 * 96   # the embedding, tied: the output head too


def layer_params(costs) -> int:
    """The decoder layers' parameters (num_params counts the tied embedding once, and the
    final norm's 96)."""
    return costs.num_params - HEAD - 96


@pytest.mark.slow
def test_a_decode_step_reads_the_weights_and_more_cache_with_more_slots(costs):
    assert (costs.rows, costs.prompt_len, costs.slots, costs.num_layers) == (16, 64, 72, 2)
    a, b = costs.decode_fixed, costs.decode_per_slot
    # Each slot read is K and V of every layer for the chip's rows and KV heads. (64 and 72
    # slots fill the same tiles of the cache's TPU layout here, so their bytes are equal.)
    assert b.flops > 0 and b.hbm_bytes >= 0
    # Around the loop, once: the cache copied into the loop's layout and back.
    assert costs.decode_around.hbm_bytes > 0
    # Every step reads the chip's share of the bf16 weights it multiplies by (split over
    # tensor = 2 in the decode layout).
    assert a.hbm_bytes >= (layer_params(costs) + HEAD) * 2 / 2
    assert costs.decode_step(72).flops > costs.decode_step(64).flops


@pytest.mark.slow
def test_the_rollout_is_the_prefill_plus_each_decode_step_at_its_slots(costs):
    window = lambda step: costs.prompt_len + step + 1  # noqa: E731  (a growing cache)
    plan = roofline.estimate(costs, window, "the filled slots")
    full = roofline.estimate(costs)
    steps = [costs.decode_step(window(s)) for s in range(costs.decode_steps)]
    assert plan.decode.cost == sum(steps, Cost()) + costs.decode_around
    assert plan.rollout.cost == costs.prefill + plan.decode.cost
    assert plan.rollout.seconds.total == pytest.approx(
        plan.prefill.seconds.total + plan.decode.seconds.total)
    # Reading fewer slots than all S at every step is cheaper (in bytes too, at sizes
    # that do not fill the same tiles).
    assert plan.decode.cost.flops < full.decode.cost.flops
    assert plan.decode.seconds.total <= full.decode.seconds.total
    assert plan.prefill == full.prefill and plan.update == full.update


@pytest.mark.slow
def test_the_update_and_prefill_flops_match_the_analytic_counts(costs):
    plan = roofline.estimate(costs)
    rows, slots, responses, layers = costs.rows, costs.slots, costs.slots - 64, 2
    head, per_layer = HEAD, layer_params(costs) / layers
    # Splash attention pads T = 72 to 128 and computes the causal half: H T^2 Dh per unit;
    # 2 units each for the reference, policy and remat forwards, 3 for dq, 4 for dkv.
    attention = 13 * 6 * 128 ** 2 * 16
    # Layers: 10 FLOPs per parameter and slot (forward 2, backward 4, remat forward 2,
    # reference forward 2); the head the same over the response slots only.
    analytic = rows * (layers * (10 * per_layer * slots + attention) + 10 * head * responses)
    measured = plan.update.cost.flops * CHIPS
    assert 0.8 < measured / analytic < 1.2, measured / analytic
    # Against the usual 6 x parameters x tokens (forward and backward, the head over every
    # slot): 1.4x here, from remat, the reference forward and attention.
    assert 1.2 < measured / (6 * (layer_params(costs) + head) * rows * slots) < 2.5
    assert plan.update.cost == costs.micro_batch * 2 + costs.optimizer
    # The prefill: 2 FLOPs per layer parameter and prompt slot (no head), plus splash
    # attention's forward, which XLA's cost analysis does not count.
    prefill = rows * layers * (2 * per_layer * 64 + 2 * 6 * 128 ** 2 * 16)
    assert 0.8 < costs.prefill.flops * CHIPS / prefill < 1.2, costs.prefill.flops * CHIPS / prefill


@pytest.mark.slow
def test_the_json_has_every_part_and_the_total(costs):
    payload = json.loads(roofline.estimate(costs).to_json())
    for part in ("prefill", "decode", "rollout", "micro_batch", "optimizer", "update"):
        assert {"flops", "hbm_bytes", "ici_bytes", "seconds", "bound"} <= set(payload[part])
        assert payload[part]["bound"] in ("compute", "HBM", "ICI")
    assert payload["total_seconds"] == pytest.approx(payload["rollout"]["seconds"]
                                                     + payload["update"]["seconds"])
    assert payload["chip"]["name"] == "v5p" and payload["topology"] == "v5p:2x2x1"
    assert payload["slots_read"] == "all 72 slots"
    assert payload["update"]["ici_bytes"] > 0     # gradients are reduced over fsdp


def test_a_multi_update_config_is_refused_before_compiling():
    with pytest.raises(UserError, match="single-update"):
        roofline.measure(SMOKE, ["grpo.ppo_epochs=2"], topology="v5p:2x2x1")


def test_a_chip_without_published_peaks_is_refused_by_name():
    with pytest.raises(UserError, match="v9x"):
        roofline.chip_of("v9x:2x2")


def test_the_cli_has_a_plan_command():
    args = build_parser().parse_args(["plan", "--config", SMOKE, "--json"])
    assert (args.topology, args.json, args.run.__name__) == ("v5p:4x4x4", True, "_plan")


class FakeCompiled:
    """What `program_cost` reads of a compiled program."""

    def __init__(self, text):
        self.text = text

    def as_text(self):
        return self.text

    def cost_analysis(self):
        return {"flops": 10.0, "bytes accessed": 20.0}


def test_a_program_with_an_unexpected_loop_is_refused_by_name():
    loop = ("ENTRY %main (a: f32[4]) -> f32[4] {\n"
            "  %w = (s32[], f32[4]) while(%t), condition=%c, body=%b\n}\n")
    # The loop moves nothing the HLO shows (its body is not in the text); XLA's count is kept.
    assert roofline.program_cost(FakeCompiled(loop), 4, 1, 16, "decode",
                                 loops=1) == Cost(flops=10, xla_bytes=20)
    with pytest.raises(RuntimeError, match="learn program holds 1 while loops, not 0"):
        roofline.program_cost(FakeCompiled(loop), 4, 1, 16, "learn")
