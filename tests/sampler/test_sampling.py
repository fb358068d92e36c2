"""Pure sampling math: greedy, temperature, top-k, top-p, log-probs, entropies, buckets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.sampler import (GREEDY, SamplingConfig, bucket_length, left_pad,
                              logprob_and_entropy, row_keys, sample_tokens)
from ssrl_jax.sampler.sampling import keep_top_p, row_keys_at

LOGITS = jnp.array([[0.0, 3.0, 1.0, 2.0, -1.0, 0.5],
                    [2.0, 0.0, 0.1, -3.0, 1.9, 0.0]], jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "n"))
def _draws(logits, config, n):
    keys = jax.vmap(lambda i: jax.random.split(jax.random.key(i), 2))(jnp.arange(n))
    return jax.vmap(lambda k: sample_tokens(logits, k, config))(keys)


def draws(config, n=200, logits=LOGITS):
    """n independent draws for each of the 2 rows: [n, 2]."""
    return np.asarray(_draws(logits, config, n))


def test_greedy_is_argmax():
    np.testing.assert_array_equal(sample_tokens(LOGITS, row_keys(0, 2), GREEDY), [1, 0])


def test_suppressed_tokens_are_never_picked():
    greedy = SamplingConfig(temperature=0.0, suppressed_token_ids=(1, 0))
    np.testing.assert_array_equal(sample_tokens(LOGITS, row_keys(0, 2), greedy), [3, 4])
    tokens = draws(SamplingConfig(temperature=1.0, suppressed_token_ids="1, 3"))
    assert not {1, 3} & set(tokens.ravel()) and len(set(tokens[:, 0])) == 4
    top2 = draws(SamplingConfig(temperature=1.0, top_k=2, suppressed_token_ids=(1,)))
    assert set(top2[:, 0]) == {3, 2} and set(top2[:, 1]) == {0, 4}
    with pytest.raises(ValueError, match="vocabulary size 6"):
        sample_tokens(LOGITS, row_keys(0, 2), SamplingConfig(suppressed_token_ids=(6,)))


def test_top_k_only_draws_the_k_best():
    tokens = draws(SamplingConfig(temperature=1.0, top_k=2))
    assert set(tokens[:, 0]) == {1, 3}
    assert set(tokens[:, 1]) == {0, 4}


def test_top_p_keeps_smallest_set_reaching_p():
    # Row 0 sorted probs: 0.61, 0.22, 0.08, ... -> top_p 0.7 keeps tokens 1 and 3.
    tokens = draws(SamplingConfig(temperature=1.0, top_p=0.7))
    assert set(tokens[:, 0]) == {1, 3}


def test_keep_top_p_always_keeps_the_best():
    out = keep_top_p(jnp.array([[5.0, 1.0, 0.0], [1.0, 1.0, 1.0]]), 1e-6)
    np.testing.assert_array_equal(np.isfinite(out), [[True, False, False], [True, False, False]])


def test_temperature_sharpens_and_flattens():
    cold = draws(SamplingConfig(temperature=0.05))
    np.testing.assert_array_equal(cold[:, 0], 1)
    plain = draws(SamplingConfig(temperature=1.0))
    assert len(set(plain[:, 0])) == 6


def test_a_rows_draw_depends_only_on_its_key_and_logits():
    keys = row_keys_at(row_keys(3, 4), jnp.array([5, 9, 2, 11]))
    config = SamplingConfig(temperature=1.0, top_k=4, top_p=0.9)
    logits = jax.random.normal(jax.random.key(0), (4, 50))
    sample = jax.jit(sample_tokens, static_argnames="config")
    full = sample(logits, keys, config=config)
    alone = sample(logits[2:3], keys[2:3], config=config)
    assert int(full[2]) == int(alone[0])
    # Row i's key does not depend on the batch size.
    assert jnp.array_equal(jax.random.key_data(row_keys(3, 4)[1]),
                           jax.random.key_data(row_keys(3, 9)[1]))


def test_logprob_and_entropy_are_untempered_fp32():
    logprob, entropy = logprob_and_entropy(LOGITS, jnp.array([1, 4]))
    logp = jax.nn.log_softmax(LOGITS, axis=-1)
    np.testing.assert_allclose(logprob, [logp[0, 1], logp[1, 4]], rtol=1e-6)
    np.testing.assert_allclose(entropy, -(jnp.exp(logp) * logp).sum(-1), rtol=1e-6)
    assert logprob.dtype == entropy.dtype == jnp.float32


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("top_p", 0.0), ("top_k", -2),
                                          ("suppressed_token_ids", "5,x")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**{field: value})


def test_buckets_and_left_padding():
    assert [bucket_length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert bucket_length(5, [8, 24]) == 8 and bucket_length(9, [8, 24]) == 24
    with pytest.raises(ValueError, match="prompt_buckets"):
        bucket_length(30, [8, 24])
    ids, valid = left_pad([[1, 2], [3], [4, 5, 6]], 4, pad_id=9)
    np.testing.assert_array_equal(ids, [[9, 9, 1, 2], [9, 9, 9, 3], [9, 4, 5, 6]])
    np.testing.assert_array_equal(valid.sum(1), [2, 1, 3])
