"""`bench memory --topology`: the real train step compiled by libtpu for a v5p slice, no chip.

The decode layout (the rollout's bf16 weights gathered over fsdp once per step) leaves
no weight all-gather inside the compiled decode loop; the training layout gathers every
layer's weights at every decode step. Splash attention compiles to Mosaic kernels, and with
`model.decode_attention=paged` the decode loop reads the KV cache through the paged
attention kernel.
Needs the `tpu` extra (CI installs it).
"""

import pathlib

import pytest

from tests.benchmarks.libtpu import require_libtpu

require_libtpu()

from ssrl_jax.benchmarks import memory  # noqa: E402
from ssrl_jax.cli_errors import UserError  # noqa: E402

SMOKE = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
# A small model whose dimensions differ from the activations' (8 rows per device, 1024
# vocabulary), so weights and activations cannot be mistaken for each other by shape; heads
# of 128 as in the paper models (the paged decode kernel's blocks need them).
OVERRIDES = ["mesh.fsdp=2", "mesh.tensor=2", "rollout.max_new_tokens=8",
             "data.max_prompt_tokens=64", "model.dtype=bfloat16",
             "model.random.hidden_size=96", "model.random.intermediate_size=224",
             "model.random.num_heads=6", "model.random.head_dim=128"]


# (weight layout, attention): the shipped TPU setting, and the one before issue 21.
SETTINGS = {"decode": ("decode", "splash"), "train": ("train", "einsum")}
# The decode setting also opts into the paged decode kernel (`model.decode_attention`).
PAGED = {"decode": ["model.decode_attention=paged"], "train": []}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = {}
    for name, (layout, attention) in SETTINGS.items():
        hlo_path = tmp_path_factory.mktemp(name) / "step.hlo"
        plan = memory.run(SMOKE, OVERRIDES + [f"rollout.weight_layout={layout}",
                                              f"model.attention={attention}"] + PAGED[name],
                          topology="v5p:2x2x1", hlo_out=str(hlo_path))
        out[name] = plan
        out[name + "_hlo"] = hlo_path.read_text()
    return out


@pytest.mark.slow
def test_the_decode_loop_gathers_no_weights_in_the_decode_layout(plans):
    decode, train = plans["decode"], plans["train"]
    assert (decode.backend, decode.topology, decode.param_dtype) == ("tpu", "v5p:2x2x1",
                                                                     "float32")
    assert decode.mesh == {"data": 1, "fsdp": 2, "tensor": 2}
    assert decode.decode_loop_weight_all_gathers == 0
    # The same step in the training layout gathers weights inside the loop: the count
    # can fail.
    assert train.decode_loop_weight_all_gathers >= 2
    assert train.decode_loop_weight_gather_bytes > 0
    # Activations are still gathered in both (the sampler reads whole rows of logits).
    assert decode.decode_loop_all_gathers >= 1


@pytest.mark.slow
def test_the_decode_copy_costs_its_fsdp_share_and_fits(plans):
    decode, train = plans["decode"], plans["train"]
    # bf16 copies: split 4 ways (fsdp x tensor) in training, 2 ways (tensor) for decoding.
    assert decode.rollout_weights > 1.5 * train.rollout_weights
    assert decode.hbm_bytes_per_chip == 95 * memory.GIB
    assert 0 < decode.peak < 0.05 * decode.hbm_bytes_per_chip
    assert decode.peak >= decode.arguments + decode.temporaries
    payload = decode.to_json()
    assert '"backend": "tpu"' in payload and '"peak_bytes_per_chip"' in payload


@pytest.mark.slow
def test_splash_attention_is_compiled_as_a_mosaic_kernel(plans):
    # The Pallas kernel lowers to Mosaic custom calls (forward and backward), einsum to none.
    assert plans["decode_hlo"].count('custom_call_target="tpu_custom_call"') >= 2
    assert 'custom_call_target="tpu_custom_call"' not in plans["train_hlo"]


@pytest.mark.slow
def test_the_decode_loop_reads_the_cache_through_the_paged_kernel(plans):
    # Opted in, every layer's decode step reads each row's filled pages only; the einsum
    # step reads all slots.
    assert plans["decode"].decode_loop_paged_attention_kernels >= 1
    assert plans["train"].decode_loop_paged_attention_kernels == 0
    assert '"decode_loop_paged_attention_kernels"' in plans["decode"].to_json()


def test_an_unknown_topology_is_refused_by_name():
    with pytest.raises(UserError, match="v5p:9x9x9"):
        memory.topology_devices("v5p:9x9x9")
