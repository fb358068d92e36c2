"""The CPU decode loop's cache layout: per-layer chunks, heads before slots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.models import KVCache, layers
from ssrl_jax.sampler import layer_loop

WINDOWS = (24, 40, 48)


def _random_cache(model, lengths, seed: int = 0) -> KVCache:
    cache = KVCache.create(model.config, len(lengths), WINDOWS[-1])
    rng = np.random.RandomState(seed)
    return KVCache(k=jnp.asarray(rng.randn(*cache.k.shape), jnp.float32),
                   v=jnp.asarray(rng.randn(*cache.v.shape), jnp.float32),
                   lengths=jnp.asarray(lengths, jnp.int32))


def test_chunks_split_at_the_windows_and_stack_back(model):
    cache = _random_cache(model, [30, 2, 47])
    caches = layer_loop.split_cache(cache, WINDOWS)
    assert len(caches.layers) == model.config.num_layers
    kv_heads, head_dim = model.config.num_kv_heads, model.config.head_dim
    assert [c.shape for c in caches.layers[0].k] == [
        (3, kv_heads, 24, head_dim), (3, kv_heads, 16, head_dim), (3, kv_heads, 8, head_dim)]
    back = layer_loop.stack_cache(caches)
    for name in ("k", "v", "lengths"):
        np.testing.assert_array_equal(getattr(back, name), getattr(cache, name))


@pytest.mark.parametrize("end", [16, 23, 24, 39, 47])
def test_a_step_over_chunks_equals_the_model_extend(model, end):
    """One token per row after its last, the longest row's at slot `end`, read up to the
    window that holds it (the other row's slot in an earlier chunk, or the same): same
    hidden states and the same cache as the model's layer scan over the stacked cache."""
    cache = _random_cache(model, [end, max(end - 17, 1), 9], seed=end)
    kv_len = next(w for w in WINDOWS if end < w)
    reads = None if kv_len == WINDOWS[-1] else kv_len
    ids = jnp.asarray([[5], [17], [3]], jnp.int32)
    token_valid = jnp.asarray([[True], [True], [False]])
    want_hidden, want_cache = model.extend(ids, token_valid, cache, kv_len=reads)
    params = layer_loop.layer_params(model)
    hidden, caches = jax.jit(lambda c: layer_loop.extend(model, params, ids, token_valid, c,
                                                         kv_len=reads))(
        layer_loop.split_cache(cache, WINDOWS))
    np.testing.assert_allclose(hidden, want_hidden, rtol=1e-5, atol=1e-5)
    got_cache = layer_loop.stack_cache(caches)
    for name in ("k", "v"):
        np.testing.assert_allclose(getattr(got_cache, name), getattr(want_cache, name),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_cache.lengths, [end + 1, max(end - 17, 1) + 1, 9])


def test_chunks_take_one_token_per_row(model):
    caches = layer_loop.split_cache(_random_cache(model, [8, 8]), WINDOWS)
    ids = jnp.zeros((2, 2), jnp.int32)
    with pytest.raises(ValueError, match="one new token per row"):
        layer_loop.extend(model, layer_loop.layer_params(model), ids, ids == 0, caches,
                          kv_len=WINDOWS[0])


@pytest.mark.parametrize("queries", [1, 3])
def test_attention_over_chunks_equals_attention_over_the_whole_cache(queries):
    rng = np.random.RandomState(queries)
    batch, heads, kv_heads, head_dim, sizes = 2, 4, 2, 8, (5, 3, 8)
    slots = sum(sizes)
    q = jnp.asarray(rng.randn(batch, queries, heads, head_dim), jnp.float32)
    k = jnp.asarray(rng.randn(batch, slots, kv_heads, head_dim), jnp.float32)
    v = jnp.asarray(rng.randn(batch, slots, kv_heads, head_dim), jnp.float32)
    mask = jnp.asarray(rng.rand(batch, queries, slots) > 0.3)
    mask = mask.at[0, 0].set(False)  # a query that sees nothing: padding, finite output
    edges = np.cumsum((0,) + sizes)
    chunks = [(k[:, a:b].swapaxes(1, 2), v[:, a:b].swapaxes(1, 2))
              for a, b in zip(edges, edges[1:])]
    got = layers.attention_over_chunks(q, [c[0] for c in chunks], [c[1] for c in chunks], mask)
    want = layers.attention(q, k, v, mask)
    assert got.shape == want.shape == (batch, queries, heads, head_dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
