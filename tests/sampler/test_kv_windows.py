"""Windowed KV reads: decode steps attend over the filled part of the cache only."""

import re

import jax
import numpy as np
import pytest

from ssrl_jax.sampler import Sampler, SamplingConfig, row_keys, row_outputs
from ssrl_jax.sampler.kv_windows import MIN_WINDOW_SPAN, kv_windows, slots_read
from tests.sampler.test_sampler import (PROMPTS, assert_policy_stats_match_forward,
                                        transformers_greedy)

PROMPT_BUCKET = 16
NEW_TOKENS = 2 * MIN_WINDOW_SPAN
CACHE_LEN = PROMPT_BUCKET + NEW_TOKENS
WINDOWS = (80, 144)


def test_windows_split_the_span_evenly_and_end_at_the_cache_length():
    assert kv_windows(PROMPT_BUCKET, CACHE_LEN, 2) == WINDOWS
    assert kv_windows(16, 208, 3) == (80, 144, 208)
    assert kv_windows(32, 288, 4) == (96, 160, 224, 288)
    assert kv_windows(1024, 5120, 4) == (2048, 3072, 4096, 5120)
    # Never narrower than MIN_WINDOW_SPAN: a short span is one window, the whole cache.
    assert kv_windows(64, 128, 8) == (128,)
    assert kv_windows(0, 100, 4) == (100,)
    # Rounded up to a multiple of 8, deduplicated, capped at the cache length.
    assert kv_windows(3, 200, 3) == (72, 136, 200)
    assert [slots_read(WINDOWS, end) for end in (16, 79, 80, 143)] == [80, 80, 144, 144]
    with pytest.raises(ValueError, match="count"):
        kv_windows(0, 100, 0)
    with pytest.raises(ValueError, match="start < cache_len"):
        kv_windows(100, 100, 2)


@pytest.fixture(scope="module")
def samplers(model, tokenizer):
    return {count: Sampler(model, tokenizer=tokenizer, eos_ids=(),
                           prompt_buckets=(PROMPT_BUCKET,), kv_windows=count)
            for count in (1, 2)}


def test_windowed_greedy_decoding_matches_transformers_and_the_whole_cache_reads(
        model, hf_model, samplers):
    states = {count: s.generate(PROMPTS, max_new_tokens=NEW_TOKENS)
              for count, s in samplers.items()}
    assert int(states[2].num_steps) == NEW_TOKENS
    whole, windowed = row_outputs(states[1]), row_outputs(states[2])
    expected = transformers_greedy(hf_model, PROMPTS, NEW_TOKENS)
    for b, row in enumerate(windowed):
        np.testing.assert_array_equal(row.completion, expected[b])
        np.testing.assert_array_equal(row.tokens, whole[b].tokens)
        # The same softmax over fewer (masked) slots: equal up to float rounding.
        np.testing.assert_allclose(row.logprobs, whole[b].logprobs, atol=1e-4)
        np.testing.assert_allclose(row.entropies, whole[b].entropies, atol=1e-4)
    assert_policy_stats_match_forward(model, windowed)


def test_sampled_rows_are_the_same_with_windows(samplers):
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.95)
    rows = {count: row_outputs(s.generate(PROMPTS, max_new_tokens=NEW_TOKENS, sampling=sampling,
                                          keys=row_keys(5, len(PROMPTS))))
            for count, s in samplers.items()}
    for whole, windowed in zip(rows[1], rows[2]):
        np.testing.assert_array_equal(windowed.tokens, whole.tokens)


@pytest.mark.parametrize("layer_loop", [True, False])
def test_each_window_is_a_loop_whose_attention_reads_only_its_slots(samplers, layer_loop):
    """The program has one decode loop per window, and each loop's attention scores cover
    that window's slots (not the cache length), with the model's layer scan and with the
    CPU layer loop's chunked cache."""
    from ssrl_jax.sampler import sampler as sampler_lib

    s = samplers[2]
    ids = np.zeros((len(PROMPTS), PROMPT_BUCKET), np.int32)
    valid = np.ones_like(ids, bool)
    table = s._device_stop_table(())
    jaxpr = str(jax.make_jaxpr(
        lambda p, i, v, k, a, b, e: sampler_lib._generate(
            p, i, v, k, a, b, e, np.int32(NEW_TOKENS), graphdef=s.graphdef,
            cache_len=CACHE_LEN, sampling=SamplingConfig(), pad_id=0,
            layer_loop=layer_loop, windows=WINDOWS))(
        s.params, ids, valid, row_keys(0, len(PROMPTS)), *table, s._device_eos_ids()))
    assert jaxpr.count("while[") == len(WINDOWS)
    kv_heads = s.config.num_kv_heads
    groups = s.config.num_heads // kv_heads
    for window in WINDOWS:
        scores = rf"f32\[{len(PROMPTS)},{kv_heads},{groups},1,{window}\]"
        assert re.search(scores, jaxpr), f"no attention scores over {window} slots"
