"""Sharded models give the unsharded numbers; parameters live in their shards."""

import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssrl_jax.models import ModelConfig, init_model
from ssrl_jax.sharding import ShardingRules, make_mesh
from tests.helpers import padded_batch

CONFIG = ModelConfig(family="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=True,
                     rms_norm_eps=1e-6)
MESHES = {"data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}, "fsdp8": {"fsdp": 8}}


@pytest.fixture(scope="module")
def reference_logits():
    ids, mask = padded_batch(CONFIG.vocab_size)
    model = init_model(CONFIG, seed=3)
    return ids, mask, np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_logits_equal_unsharded(mesh_name, reference_logits, eight_devices):
    ids, mask, expected = reference_logits
    mesh = make_mesh(MESHES[mesh_name])
    model = init_model(CONFIG, seed=3, mesh=mesh)
    batch_sharding = ShardingRules().sharding(("batch", None), ids.shape, mesh)
    with jax.set_mesh(mesh):
        got = jax.jit(lambda i, m: model(i, attention_mask=m))(
            jax.device_put(ids, batch_sharding), jax.device_put(mask, batch_sharding))
    np.testing.assert_allclose(np.asarray(got)[mask], expected[mask], atol=1e-5, rtol=0)


def test_parameters_are_created_in_their_shards(eight_devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = init_model(CONFIG, mesh=mesh)
    assert model.layers.wq[...].sharding.spec == P(None, "fsdp", "tensor", None)
    assert model.layers.w_down[...].sharding.spec == P(None, "tensor", "fsdp")
    assert model.embed[...].sharding.spec == P("tensor", "fsdp")
    shard = model.layers.w_gate[...].addressable_shards[0].data
    assert shard.shape == (2, 32, 64)  # [L, D/fsdp, F/tensor]


def test_rules_drop_mesh_axes_that_do_not_divide(eight_devices):
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    rules = ShardingRules()
    assert rules.spec(("embed", "kv_heads", "head_dim"), (64, 2, 16), mesh) == P("fsdp", None, None)
    assert rules.spec(("embed", "kv_heads", "head_dim"), (64, 8, 16), mesh) == P("fsdp", "tensor", None)
    assert rules.spec(("batch", None), (6, 3), make_mesh({"data": 2, "fsdp": 4})) == P("data", None)


def test_mesh_rest_axis_and_errors(eight_devices):
    assert dict(make_mesh({"data": 2, "fsdp": -1}).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh({"data": 2, "tensor": 2})
    with pytest.raises(ValueError, match="unknown axes"):
        make_mesh({"model": 8})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        ShardingRules.from_mapping({"embed": "model"})


def test_rules_reject_an_unknown_logical_axis():
    rules = ShardingRules()
    with pytest.raises(ValueError, match="unknown logical axis 'embd'"):
        rules.spec(("batch", "embd"))
    with pytest.raises(ValueError, match="unknown logical axis 'embed'"):
        ShardingRules.from_mapping({"batch": "data"}).mesh_axes("embed")
    assert rules.spec(("layers", "head_dim", "norm", None)) == P(None, None, None, None)


def test_every_logical_axis_the_model_and_sampler_use_has_a_rule():
    from flax import nnx

    from ssrl_jax.models.init import abstract_model, logical_axes_of
    from ssrl_jax.sampler.state import DecodeState

    config = dataclasses.replace(CONFIG, attention_bias=True)
    params = nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param))
    names = {axis for _, v in params for axis in logical_axes_of(v)}
    names |= set(jax.tree.leaves(DecodeState.logical_axes()))
    names.discard(None)
    assert {"layers", "embed", "head_dim", "norm", "vocab", "batch"} <= names
    rules = ShardingRules()
    for name in names:
        rules.mesh_axes(name)
