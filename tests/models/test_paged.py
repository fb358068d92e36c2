"""The paged decode attention kernel (Pallas TPU, interpreted on CPU) against the einsum path.

The kernel reads K and V as bf16 whatever their dtype, so: with fp32 queries and K/V that
bf16 holds exactly it agrees with `layers.attention` to 1e-5; with bf16 everything, every
entry is within 2e-2 of the einsum path (both round to bf16, in different places). Rows of
different lengths read only their own slots (what lies past a row's length cannot change
its output), sharded or not, and a bf16 model with `decode_attention="paged"` decodes
through it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.models import KVCache, ModelConfig, init_model, layers, paged
from ssrl_jax.sharding import ShardingRules, make_mesh

# The kernel is interpreted on CPU: seconds per call.
pytestmark = pytest.mark.slow

ROWS, SLOTS, KV_HEADS, GROUPS, HEAD_DIM = 4, 48, 2, 4, 128
LENGTHS = jnp.array([1, 17, 48, 30], jnp.int32)


def bf16_exact(x: jax.Array) -> jax.Array:
    return x.astype(jnp.bfloat16).astype(jnp.float32)


@pytest.fixture(scope="module")
def qkv():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (ROWS, 1, KV_HEADS * GROUPS, HEAD_DIM))
    k = bf16_exact(jax.random.normal(keys[1], (ROWS, SLOTS, KV_HEADS, HEAD_DIM)))
    v = bf16_exact(jax.random.normal(keys[2], (ROWS, SLOTS, KV_HEADS, HEAD_DIM)))
    return q, k, v


def heads_first(x: jax.Array) -> jax.Array:
    """[B, S, K, Dh] -> [K, B, S, Dh], the cache's layout."""
    return x.transpose(2, 0, 1, 3)


def kernel(q, k, v, lengths, rules=None):
    return paged.paged_decode_attention(q, heads_first(k), heads_first(v), lengths, rules)


def reference(q, k, v, lengths):
    mask = jnp.arange(k.shape[1])[None, None, :] < lengths[:, None, None]
    return layers.attention(q, k, v, mask)


def test_the_kernel_equals_einsum_attention_over_each_rows_filled_slots(qkv):
    q, k, v = qkv
    got = kernel(q, k, v, LENGTHS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(reference(q, k, v, LENGTHS)),
                               atol=1e-5)


def test_slots_past_a_rows_length_are_not_read(qkv):
    q, k, v = qkv
    past = jnp.arange(SLOTS)[None, :, None, None] >= LENGTHS[:, None, None, None]
    garbage = jnp.where(past, 1e4, k), jnp.where(past, -1e4, v)
    np.testing.assert_array_equal(np.asarray(kernel(q, *garbage, LENGTHS)),
                                  np.asarray(kernel(q, k, v, LENGTHS)))


def test_bf16_is_within_a_loose_bound_of_the_einsum_path(qkv):
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv)
    got = np.asarray(kernel(q, k, v, LENGTHS), np.float32)
    expected = np.asarray(reference(q, k, v, LENGTHS), np.float32)
    assert got.dtype == np.float32 and np.abs(got - expected).max() < 2e-2


def test_sharded_rows_and_heads_equal_the_unsharded_kernel(qkv, eight_devices):
    q, k, v = qkv
    expected = kernel(q, k, v, LENGTHS)
    mesh = make_mesh({"fsdp": 4, "tensor": 2})   # 4 rows over fsdp, 2 KV heads over tensor
    with jax.set_mesh(mesh):
        got = jax.jit(lambda *a: kernel(*a, ShardingRules()))(
            q, k, v, LENGTHS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)


def test_page_layout_divides_the_rows_slots_and_refuses_what_it_cannot():
    assert paged.page_layout(5120) == (128, 4)      # 40 pages, blocks of 512 slots
    assert paged.page_layout(72) == (8, 9)
    with pytest.raises(ValueError, match="76 slots"):
        paged.page_layout(76)
    assert paged.supports(5120, 128, quantized=False)
    assert not paged.supports(5120, 128, quantized=True)
    assert not paged.supports(5120, 64, quantized=False)


def test_a_bf16_paged_model_decodes_through_the_kernel_like_the_einsum_model():
    config = ModelConfig(family="llama", vocab_size=64, hidden_size=64, intermediate_size=96,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128,
                         remat="none", dtype="bfloat16")
    einsum = init_model(config, seed=3)
    kernel = init_model(config.replace(decode_attention="paged"), seed=3)
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(1, 64, (2, 8)), jnp.int32)
    valid = jnp.asarray([[True] * 8, [True] * 5 + [False] * 3])
    step = jnp.asarray([[7], [9]], jnp.int32)

    def decode_one(model):
        cache = KVCache.create(model.config, 2, 16)
        _, cache = model.prefill(prompt, valid, cache)
        hidden, cache = model.extend(step, jnp.ones((2, 1), bool), cache)
        return hidden

    got, expected = (np.asarray(decode_one(m), np.float32) for m in (kernel, einsum))
    assert np.abs(got - expected).max() < 5e-2 * max(1.0, np.abs(expected).max())
    program = str(jax.make_jaxpr(decode_one)(kernel))
    assert "paged_attention" in program and "paged_attention" not in str(
        jax.make_jaxpr(decode_one)(einsum))
