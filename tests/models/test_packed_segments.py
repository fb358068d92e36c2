"""Packed rows with segment ids: each example in a row computes exactly what it computes
alone, so packing many short examples into one row changes nothing but the speed."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.models import ModelConfig, init_model
from ssrl_jax.models.layers import positions_from_segments
from ssrl_jax.toyworld.pretrain import PretrainSettings, pack


def test_positions_restart_with_each_segment():
    segments = jnp.asarray([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(positions_from_segments(segments),
                                  [[0, 1, 0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])


def test_each_packed_example_gives_the_logits_it_gives_alone():
    config = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, remat="none")
    model = init_model(config, seed=3)
    rng = np.random.default_rng(0)
    examples = [rng.integers(1, 64, n).tolist() for n in (5, 3, 7)]
    row = jnp.asarray([sum(examples, [])])
    segments = jnp.asarray([sum(([i + 1] * len(e) for i, e in enumerate(examples)), [])])

    packed = model(row, segment_ids=segments)[0]
    unmasked = model(row)[0]
    start = 0
    for example in examples:
        alone = model(jnp.asarray([example]))[0]
        np.testing.assert_allclose(packed[start:start + len(example)], alone, atol=1e-5)
        if start:  # without segments a later example sees the ones before it
            assert not np.allclose(unmasked[start:start + len(example)], alone, atol=1e-3)
        start += len(example)


def test_pack_numbers_the_examples_of_each_row_and_leaves_padding_zero():
    examples = [([7] * n, [1] * n) for n in (4, 4, 3, 6)]
    tokens, masks, segments = pack(examples, seq_len=9, pad_id=0,
                                   rng=np.random.default_rng(0))
    assert tokens.shape == masks.shape == segments.shape
    for row_tokens, row_segments in zip(tokens, segments):
        ids = row_segments[row_segments > 0]
        assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
        assert np.all(row_tokens[row_segments == 0] == 0)   # padding only
        assert np.all(row_segments[:len(ids)] > 0)          # examples first, then padding
    lengths = sorted(int(np.sum(r == s)) for r in segments for s in set(r.tolist()) - {0})
    assert lengths == [3, 4, 4, 6]


def test_an_unknown_packing_is_refused_by_name():
    with pytest.raises(ValueError, match="--packing='shared'"):
        PretrainSettings(packing="shared")
