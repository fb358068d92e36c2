"""Long injections run through the model in blocks (decode.extend_in_blocks): the same cache
and last hidden state as one `extend`, trailing empty blocks skipped."""

import jax
import jax.numpy as jnp
import numpy as np

from ssrl_jax.models import KVCache
from ssrl_jax.sampler.decode import INJECT_BLOCK, extend_in_blocks, last_real

PROMPT = 8


def _prefilled(model, rows, slots):
    ids = jax.random.randint(jax.random.key(0), (rows, PROMPT), 0, model.config.vocab_size)
    valid = jnp.ones((rows, PROMPT), bool).at[0, PROMPT - 3:].set(False)
    cache = KVCache.create(model.config, rows, slots)
    hidden, cache = model.prefill(ids, valid, cache)
    return last_real(hidden, valid), cache


def _real_tokens_first(lengths, width, vocab):
    ids = np.asarray(jax.random.randint(jax.random.key(1), (len(lengths), width), 0, vocab))
    valid = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        valid[row, :n] = True
    return jnp.asarray(np.where(valid, ids, 0)), jnp.asarray(valid)


def _assert_same(model, lengths):
    width = 2 * INJECT_BLOCK
    last, cache = _prefilled(model, len(lengths), PROMPT + width + 4)
    ids, valid = _real_tokens_first(lengths, width, model.config.vocab_size)
    whole_hidden, whole = jax.jit(lambda *a: model.extend(*a))(ids, valid, cache)
    blocked_last, blocked = jax.jit(lambda *a: extend_in_blocks(model, *a))(
        ids, valid, cache, last)
    want_lengths = np.array(lengths) + PROMPT - np.array([3] + [0] * (len(lengths) - 1))
    np.testing.assert_array_equal(np.asarray(whole.lengths), want_lengths)
    np.testing.assert_array_equal(np.asarray(blocked.lengths), want_lengths)
    filled = np.asarray(whole.valid)  # [B, S]: compare the keys / values of the used slots
    for got, want in ((blocked.k, whole.k), (blocked.v, whole.v)):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got[:, :, filled], want[:, :, filled], rtol=1e-5, atol=1e-5)
    has = np.asarray(valid.any(axis=1))
    np.testing.assert_allclose(np.asarray(blocked_last)[has],
                               np.asarray(last_real(whole_hidden, valid))[has],
                               rtol=1e-5, atol=1e-5)


def test_blocks_equal_one_extend_across_a_block_boundary(model):
    # Rows longer than a block, exactly a block, shorter, and empty.
    _assert_same(model, [2 * INJECT_BLOCK, INJECT_BLOCK + 5, INJECT_BLOCK, 7, 0])


def test_an_injection_shorter_than_a_block_skips_the_empty_trailing_block(model):
    _assert_same(model, [INJECT_BLOCK - 1, 3, 0])
