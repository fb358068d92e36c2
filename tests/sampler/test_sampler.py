"""The jitted sampler end to end on tiny random models (CPU, fp32)."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from ssrl_jax.models import load_pretrained
from ssrl_jax.sampler import (FinishReason, Sampler, SamplingConfig, TokenSource, compile_count,
                              row_keys, row_outputs)
from tests.helpers import build_hf_model
from tests.sampler.conftest import INIT_RANGE

PROMPT_LENGTHS = (3, 9, 16, 7)
# One prompt bucket and one cache length for every test of the main model, so that the
# tests share compiled programs (a fresh prefill of a whole trajectory fits the bucket too).
PROMPT_BUCKETS = (64,)
CACHE_LEN = 128
NEW_TOKENS = 64


def random_prompts(vocab, lengths=PROMPT_LENGTHS, seed=0):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(1, vocab, n)) for n in lengths]


PROMPTS = random_prompts(300)


def transformers_greedy(hf_model, prompts, new_tokens):
    """`generate(do_sample=False)` on left-padded prompts: [B, new_tokens] (pad after EOS)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=0)
    return out[:, width:].numpy()


def forward_logits(model, rows):
    """Full-forward logits [B, N, V] of each compact row (right-padded), jitted."""
    width = max(len(r.tokens) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r.tokens)] = r.tokens
        mask[i, :len(r.tokens)] = True
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda p, i, m: nnx.merge(graphdef, p)(i, attention_mask=m))
    return np.asarray(run(params, ids, mask))


def assert_policy_stats_match_forward(model, rows):
    """Every POLICY token's log-prob and entropy equal a full forward pass's (1e-4)."""
    logp = np.asarray(jax.nn.log_softmax(forward_logits(model, rows), axis=-1))
    checked = 0
    for b, r in enumerate(rows):
        for i in np.flatnonzero(r.sources == TokenSource.POLICY):
            np.testing.assert_allclose(r.logprobs[i], logp[b, i - 1, r.tokens[i]], atol=1e-4)
            entropy = -(np.exp(logp[b, i - 1]) * logp[b, i - 1]).sum()
            np.testing.assert_allclose(r.entropies[i], entropy, atol=1e-4)
            checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def sampler(model, tokenizer):
    return Sampler(model, tokenizer=tokenizer, eos_ids=(), prompt_buckets=PROMPT_BUCKETS)


@pytest.fixture(scope="module")
def greedy_rows(sampler):
    state = sampler.generate(PROMPTS, max_new_tokens=NEW_TOKENS, cache_len=CACHE_LEN)
    assert int(state.num_steps) == NEW_TOKENS
    return row_outputs(state)


SAMPLED = SamplingConfig(temperature=1.0, top_k=50, top_p=0.95)
KEYS_SEED = 11


@pytest.fixture(scope="module")
def sampled_rows(sampler):
    """24 sampled tokens per row; deterministic given the row keys (random greedy models loop)."""
    return row_outputs(sampler.generate(PROMPTS, max_new_tokens=24, cache_len=CACHE_LEN,
                                        sampling=SAMPLED, keys=row_keys(KEYS_SEED, 4)))


def policy_tokens(row):
    return row.tokens_from(TokenSource.POLICY)


def test_greedy_matches_transformers_and_forward_logprobs(model, hf_model, greedy_rows):
    expected = transformers_greedy(hf_model, PROMPTS, NEW_TOKENS)
    for b, row in enumerate(greedy_rows):
        np.testing.assert_array_equal(policy_tokens(row), expected[b])
        assert len(set(expected[b])) > 10  # a varied sequence, not one token repeated
        np.testing.assert_array_equal(row.tokens_from(TokenSource.PROMPT), PROMPTS[b])
        labels = [TokenSource.PROMPT] * len(PROMPTS[b]) + [TokenSource.POLICY] * NEW_TOKENS
        assert list(row.sources) == labels
        assert row.finish_reason == FinishReason.NONE
    assert_policy_stats_match_forward(model, greedy_rows)


@pytest.mark.parametrize("name", ["llama_untied", "qwen2_bias_tied", "qwen3_qknorm_headdim"])
def test_greedy_matches_transformers_for_each_family(name, tmp_path):
    eos = [2, 7]  # two EOS ids, as Llama 3 instruct has; transformers pads after either
    hf_model = build_hf_model(name, eos_token_id=eos, initializer_range=INIT_RANGE)
    hf_model.save_pretrained(tmp_path)
    model = load_pretrained(str(tmp_path), param_dtype="float32")
    prompts = random_prompts(128, lengths=(5, 12, 2, 9, 1), seed=1)
    assert model.config.eos_token_ids == tuple(eos)
    # One family decodes through the model's own layer scan instead of the per-layer loop.
    sampler = Sampler(model, layer_loop=name != "qwen2_bias_tied")
    rows = row_outputs(sampler.generate(prompts, max_new_tokens=NEW_TOKENS))
    expected = transformers_greedy(hf_model, prompts, NEW_TOKENS)
    for b, row in enumerate(rows):
        hits = np.flatnonzero(np.isin(expected[b], eos))
        want = expected[b] if len(hits) == 0 else expected[b][:hits[0] + 1]
        np.testing.assert_array_equal(policy_tokens(row), want)
        assert row.finish_reason == (FinishReason.EOS if len(hits) else FinishReason.NONE)


def test_cpu_programs_keep_matmuls_out_of_ynnpack(sampler):
    """The sampler compiles its CPU programs with XLA's own matmul kernels
    (`CPU_COMPILER_OPTIONS`): the same program compiled with XLA's defaults holds YNNPACK
    fusions, the sampler's none (its matmuls are XLA's own `dot`s)."""
    import numpy as np

    from ssrl_jax.sampler import sampler as sampler_lib

    assert sampler._generate is sampler_lib._generate_cpu
    ids = np.ones((4, 8), np.int32)
    args = (sampler.params, ids, np.ones_like(ids, bool), sampler_lib.row_keys(0, 4),
            *sampler._device_stop_table(()), sampler._device_eos_ids(), np.int32(4))
    static = dict(graphdef=sampler.graphdef, cache_len=16, sampling=sampler_lib.GREEDY,
                  pad_id=sampler.pad_id, layer_loop=sampler.layer_loop, windows=(16,))
    texts = {name: fn.lower(*args, **static).compile().as_text()
             for name, fn in (("default", sampler_lib._generate), ("cpu", sampler._generate))}
    assert "__ynn_fusion" in texts["default"] and "__ynn_fusion" not in texts["cpu"]
    assert " dot(" in texts["cpu"]


def test_second_call_in_the_same_bucket_does_not_recompile(sampler, greedy_rows):
    before = compile_count()
    other = random_prompts(300, lengths=(11, 2, 5, 13), seed=5)
    state = sampler.generate(other, max_new_tokens=7, cache_len=CACHE_LEN)
    assert int(state.num_steps) == 7
    # New stop strings and EOS ids of the padded table sizes reuse the program too.
    Sampler(sampler_model(sampler), token_bytes=sampler.token_bytes, eos_ids=(3, 4),
            prompt_buckets=PROMPT_BUCKETS).generate(
        other, max_new_tokens=3, cache_len=CACHE_LEN, stop_strings=("</answer>",))
    assert compile_count() == before


def sampler_model(sampler):
    return nnx.merge(sampler.graphdef, sampler.params)


def test_inject_and_resume_equal_a_fresh_prefill(model, sampler):
    state = sampler.generate(PROMPTS, max_new_tokens=10, cache_len=CACHE_LEN)
    injected = [[5, 6, 7], [], list(range(20, 28)), [1]]
    state = sampler.resume(state, injected, max_new_tokens=0)
    assert int(state.num_steps) == 0
    rows = row_outputs(state)
    for row, extra in zip(rows, injected):
        np.testing.assert_array_equal(row.tokens_from(TokenSource.INJECTED), extra)
    # Next-token logits after the injection == a full forward over the whole sequence.
    resumed_logits = np.asarray(sampler_model(sampler).logits(state.last_hidden))
    full = forward_logits(model, rows)
    last = np.array([len(r.tokens) - 1 for r in rows])
    np.testing.assert_allclose(resumed_logits, full[np.arange(4), last], atol=1e-4)

    # A second turn: inject again (row 2 nothing, but every row resumes) and decode on.
    second = [[40, 41], [42, 43, 44, 45, 46], [], [47]]
    state = sampler.resume(state, second, max_new_tokens=12, resume_rows=[True] * 4)
    assert int(state.num_steps) == 12
    rows = row_outputs(state)
    assert_policy_stats_match_forward(model, rows)
    # Greedy continuation == greedy generation from the whole context as a fresh prompt.
    contexts = [list(r.tokens[:-12]) for r in rows]
    fresh = row_outputs(sampler.generate(contexts, max_new_tokens=12, cache_len=CACHE_LEN))
    for row, ref in zip(rows, fresh):
        np.testing.assert_array_equal(row.tokens[-12:], policy_tokens(ref))
        np.testing.assert_array_equal(row.sources[-12:], TokenSource.POLICY)


def test_replace_last_takes_back_a_token_as_if_never_written(model, sampler):
    state = sampler.generate(PROMPTS, max_new_tokens=6, cache_len=CACHE_LEN)
    before = row_outputs(state)
    # Row 0: its last token becomes two POLICY tokens; row 1: dropped, then tokens injected;
    # row 2: kept, tokens injected; row 3: untouched.
    replace = [[11, 12], [], None, None]
    injected = [[30], [31, 32], [33], []]
    state = sampler.resume(state, injected, max_new_tokens=0, replace_last=replace,
                           resume_rows=[True] * 4)
    rows = row_outputs(state)
    for row, old, new, extra in zip(rows, before, replace, injected):
        kept = old.tokens if new is None else old.tokens[:-1]
        np.testing.assert_array_equal(row.tokens, np.concatenate([kept, new or [], extra]))
        labels = [TokenSource.POLICY] * len(new or []) + [TokenSource.INJECTED] * len(extra)
        np.testing.assert_array_equal(row.sources[len(kept):], labels)
    # The taken-back slot is out of the cache: next-token logits and positions equal a full
    # forward over the compacted rows.
    resumed = np.asarray(sampler_model(sampler).logits(state.last_hidden))
    full = forward_logits(model, rows)
    last = np.array([len(r.tokens) - 1 for r in rows])
    np.testing.assert_allclose(resumed, full[np.arange(4), last], atol=1e-4)
    with pytest.raises(ValueError, match="rows \\[0\\] would lose their last token"):
        sampler.resume(state, [[], [], [], []], max_new_tokens=0, replace_last=[[], None, None,
                                                                                 None])


def _stop_inside(row_bytes, first, last):
    """A stop string from inside token `first` to inside token `last` (valid UTF-8)."""
    for cut_start in range(1, len(row_bytes[first]) + 1):
        for cut_end in range(0, len(row_bytes[last])):
            text = (row_bytes[first][cut_start - 1:] + b"".join(row_bytes[first + 1:last])
                    + row_bytes[last][:cut_end + 1])
            try:
                return text.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return None


def _first_stop(row_bytes, stops):
    text = b""
    for t, piece in enumerate(row_bytes):
        text += piece
        if any(s.encode("utf-8") in text for s in stops):
            return t
    return None


def test_stop_strings_stop_each_row_at_the_right_token(sampler, sampled_rows):
    vocab = sampler.token_bytes
    generated = [[vocab[t] for t in policy_tokens(r)] for r in sampled_rows]
    stops = []
    for b, (first, last) in ((0, (4, 6)), (1, (10, 13))):
        candidates = [(f, f + (last - first)) for f in range(first, 20)]
        stop = next(s for s in (_stop_inside(generated[b], f, l) for f, l in candidates)
                    if s and len(s) >= 2)
        stops.append(stop)
    expected = [_first_stop(g, stops) for g in generated]
    assert expected[0] is not None and expected[1] is not None

    state = sampler.generate(PROMPTS, max_new_tokens=24, cache_len=CACHE_LEN, stop_strings=stops,
                             sampling=SAMPLED, keys=row_keys(KEYS_SEED, 4))
    rows = row_outputs(state)
    for b, row in enumerate(rows):
        tokens = policy_tokens(row)
        stop_at = expected[b]
        if stop_at is None:
            assert len(tokens) == 24 and row.finish_reason == FinishReason.NONE
        else:
            assert len(tokens) == stop_at + 1, (b, stops)
            assert row.finish_reason == FinishReason.STOP_STRING
            text = b"".join(vocab[t] for t in tokens)
            assert stops[row.matched_stop].encode() in text
        np.testing.assert_array_equal(tokens, policy_tokens(sampled_rows[b])[:len(tokens)])
    assert int(state.num_steps) == max(24 if e is None else e + 1 for e in expected)

    # Only the re-opened row decodes on; finished rows stay finished.
    done = np.asarray(state.done)
    target = int(np.flatnonzero(done)[0])
    injected = [[] for _ in rows]
    injected[target] = [60, 61, 62]
    state = sampler.resume(state, injected, max_new_tokens=5, stop_strings=stops,
                           sampling=SAMPLED)
    after = row_outputs(state)
    for b, (old, new) in enumerate(zip(rows, after)):
        if b == target:
            assert len(policy_tokens(new)) > len(policy_tokens(old))
            np.testing.assert_array_equal(new.tokens_from(TokenSource.INJECTED), [60, 61, 62])
        elif done[b]:
            np.testing.assert_array_equal(new.tokens, old.tokens)


def test_all_rows_ending_on_eos_end_the_loop_early(model, tokenizer, sampled_rows):
    steps = (3, 6, 2, 8)
    eos = sorted({int(policy_tokens(r)[s]) for r, s in zip(sampled_rows, steps)})
    expected = [int(np.flatnonzero(np.isin(policy_tokens(r), eos))[0]) for r in sampled_rows]
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos, prompt_buckets=PROMPT_BUCKETS)
    state = sampler.generate(PROMPTS, max_new_tokens=24, cache_len=CACHE_LEN, sampling=SAMPLED,
                             keys=row_keys(KEYS_SEED, 4))
    assert int(state.num_steps) == max(expected) + 1 < 24
    for row, stop_at, ref in zip(row_outputs(state), expected, sampled_rows):
        assert row.finish_reason == FinishReason.EOS
        np.testing.assert_array_equal(policy_tokens(row), policy_tokens(ref)[:stop_at + 1])


def test_sampled_rows_do_not_depend_on_the_rest_of_the_batch(sampler, sampled_rows):
    others = random_prompts(300, lengths=(3, 12, 4, 15), seed=9)
    mixed = [PROMPTS[0]] + others[1:]
    rows = row_outputs(sampler.generate(mixed, max_new_tokens=24, cache_len=CACHE_LEN,
                                        sampling=SAMPLED, keys=row_keys(KEYS_SEED, 4)))
    np.testing.assert_array_equal(rows[0].tokens, sampled_rows[0].tokens)
    assert len({tuple(policy_tokens(r)) for r in sampled_rows}) == 4
    assert_policy_stats_match_forward(sampler_model(sampler), sampled_rows[:2])


def test_a_suppressed_token_never_appears_even_where_greedy_picks_it(sampler, greedy_rows):
    row = greedy_rows[1]
    greedy = policy_tokens(row)[:16]
    banned = int(np.bincount(greedy).argmax())  # greedy's most frequent token
    first = int(np.flatnonzero(greedy == banned)[0])
    sampling = SamplingConfig(temperature=0.0, suppressed_token_ids=(banned,))
    state = sampler.generate([PROMPTS[1]], max_new_tokens=16, cache_len=CACHE_LEN,
                             sampling=sampling)
    tokens = policy_tokens(row_outputs(state)[0])
    assert banned not in tokens and len(tokens) == 16
    np.testing.assert_array_equal(tokens[:first], greedy[:first])  # same until greedy's pick


def test_errors_name_the_argument(sampler):
    with pytest.raises(ValueError, match="cache_len"):
        sampler.generate(PROMPTS, max_new_tokens=4, cache_len=16)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        sampler.generate([[1], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="stop_strings"):
        Sampler(sampler_model(sampler)).stop_table(["</answer>"])
