"""An int8 KV cache (`ModelConfig.kv_cache_dtype = "int8"`): one fp32 scale per slot and head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.models import ConfigError, ModelConfig, QuantizedKV, init_model, layers
from ssrl_jax.sampler import Sampler, TokenSource, row_outputs
from tests.sampler.test_sampler import forward_logits

CONFIG = ModelConfig(family="llama", vocab_size=96, hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18]]
NEW_TOKENS = 40


def test_quantize_kv_rounds_each_vector_to_its_own_scale():
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 5, 2, 16) * rng.rand(3, 5, 2, 1) * 10, jnp.float32)
    x = x.at[0, 0, 0].set(0.0)
    values, scale = layers.quantize_kv(x)
    assert values.dtype == jnp.int8 and values.shape == x.shape
    assert scale.dtype == jnp.float32 and scale.shape == x.shape[:-1]
    np.testing.assert_array_equal(np.abs(values).max(axis=-1)[scale > 0], 127)
    error = np.abs(np.asarray(values, np.float32) * scale[..., None] - x)
    assert np.all(error <= scale[..., None] / 2 + 1e-6)
    assert float(scale[0, 0, 0]) == 0.0 and not np.any(values[0, 0, 0])


def test_scaled_attention_over_int8_equals_attention_over_the_dequantized_cache():
    rng = np.random.RandomState(1)
    q = jnp.asarray(rng.randn(2, 3, 4, 16), jnp.float32)
    k, v = (jnp.asarray(rng.randn(2, 10, 2, 16), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.rand(2, 3, 10) > 0.2)
    (kq, ks), (vq, vs) = layers.quantize_kv(k), layers.quantize_kv(v)
    got = layers.attention(q, kq, vq, mask, ks, vs)
    dequantized = layers.attention(q, kq * ks[..., None], vq * vs[..., None], mask)
    np.testing.assert_allclose(got, dequantized, rtol=1e-5, atol=1e-6)
    # ... and within int8's rounding of the exact attention.
    np.testing.assert_allclose(got, layers.attention(q, k, v, mask), atol=0.03)


@pytest.fixture(scope="module")
def decoded():
    model = init_model(CONFIG.replace(kv_cache_dtype="int8"), seed=0)
    sampler = Sampler(model, eos_ids=())
    state = sampler.generate(PROMPTS, max_new_tokens=NEW_TOKENS)
    return sampler, state, row_outputs(state)


def test_an_int8_cache_decodes_what_full_precision_would_score_alike(decoded):
    """The log-probs the int8 sampler records for its own tokens are within int8's rounding
    of a full-precision forward pass over the same tokens (the full-precision cache's are
    within 1e-4, `assert_policy_stats_match_forward`)."""
    sampler, state, rows = decoded
    assert not sampler.layer_loop  # the CPU layer loop keeps an unquantized cache
    assert isinstance(state.cache.k, QuantizedKV) and state.cache.k.values.dtype == jnp.int8
    assert state.cache.k.scale.shape == state.cache.k.values.shape[:-1]
    exact = init_model(CONFIG, seed=0)
    logp = np.asarray(jax.nn.log_softmax(forward_logits(exact, rows), axis=-1))
    errors = [row.logprobs[i] - logp[b, i - 1, row.tokens[i]]
              for b, row in enumerate(rows)
              for i in np.flatnonzero(row.sources == TokenSource.POLICY)]
    assert len(errors) == len(PROMPTS) * NEW_TOKENS
    assert 0 < np.abs(errors).max() < 5e-3  # it did read int8 values, and closely


def test_an_int8_cache_holds_about_half_the_bytes_of_bf16():
    def nbytes(config):
        from ssrl_jax.models import KVCache

        cache = jax.eval_shape(lambda: KVCache.create(config, 4, 64))
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((cache.k, cache.v)))

    bf16 = CONFIG.replace(dtype="bfloat16")
    ratio = nbytes(bf16.replace(kv_cache_dtype="int8")) / nbytes(bf16)
    assert ratio == pytest.approx((1 + 4 / CONFIG.head_dim) / 2)


def test_the_layer_loop_refuses_an_int8_cache_and_the_config_names_bad_dtypes():
    model = init_model(CONFIG.replace(kv_cache_dtype="int8"), seed=0)
    with pytest.raises(ValueError, match="layer loop keeps an unquantized cache"):
        Sampler(model, eos_ids=(), layer_loop=True).generate(PROMPTS, max_new_tokens=2)
    with pytest.raises(ConfigError, match="kv_cache_dtype='fp8'"):
        CONFIG.replace(kv_cache_dtype="fp8")
