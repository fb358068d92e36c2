"""The four rollout modes end to end: a real server on loopback, the scripted searching model
(search_model.py), the sampler's continuation, and the loss mask of what was injected."""

import numpy as np
import pytest

from ssrl_jax.rl.masks import loss_mask
from ssrl_jax.sampler import GREEDY, TokenSource
from ssrl_jax.search.client import SearchClient
from ssrl_jax.search.rollout import (SearchPolicy, injection_rounds, last_query, search_rollout,
                                     wants_real)
from tests.search.search_model import searching_sampler
from tests.short_prompts import short_prompt_ids

QUESTIONS = ["What is the capital of France?", "Which river is the largest?", "Where?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    sampler, tok = searching_sampler(tmp_path_factory.mktemp("searching_model"))
    prompts = [short_prompt_ids(q, tok) for q in QUESTIONS]
    return sampler, tok, prompts


@pytest.fixture(scope="module")
def runs(setup, server_url):
    sampler, tok, prompts = setup
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    out = {}
    with SearchClient(server_url, topk=2) as client:
        for mode in ("self", "real", "first_k_real", "entropy_guided"):
            policy = SearchPolicy(mode=mode, max_turns=3, first_k=1, max_info_tokens=48)
            out[mode] = search_rollout(sampler, prompts, policy=policy, client=client,
                                       encode=encode, max_new_tokens=64, sampling=GREEDY,
                                       stop_strings=("</answer>",))
            out[mode].counters = client.reset_counters()
    return out


def _text(tok, tokens, sources, *keep):
    return tok.decode(tokens[np.isin(sources, [int(k) for k in keep])].tolist())


@pytest.mark.slow
def test_counts_per_mode(runs):
    counts = {m: (r.real_searches.tolist(), r.self_searches.tolist()) for m, r in runs.items()}
    assert counts["self"] == ([0] * 3, [2] * 3)
    assert counts["real"] == ([3] * 3, [1] * 3)
    assert counts["first_k_real"] == ([1] * 3, [1] * 3)
    assert counts["entropy_guided"] == ([2] * 3, [1] * 3)
    # Entropy-guided issues fewer real searches than real on the same questions, and the
    # client saw exactly the real ones.
    assert runs["entropy_guided"].real_searches.sum() < runs["real"].real_searches.sum()
    for mode, run in runs.items():
        assert run.counters["queries"] == run.real_searches.sum(), mode
        assert run.metrics()["real_searches"] == float(run.real_searches.mean())
    guided = runs["entropy_guided"].queries[0]
    assert [q.outcome for q in guided] == ["real", "real", "self"]
    assert guided[1].entropy > guided[0].entropy and guided[2].entropy == guided[1].entropy
    assert guided[0].query == "capital France" and guided[1].query == "river flows"


@pytest.mark.slow
def test_retrieved_text_is_inside_information_and_masked(runs, setup):
    sampler, tok, _ = setup
    for mode in ("real", "first_k_real", "entropy_guided"):
        state = runs[mode].state
        tokens, sources = np.asarray(state.tokens), np.asarray(state.sources)
        mask = loss_mask(tokens, sources, sampler.token_bytes)
        for row in range(len(QUESTIONS)):
            response = _text(tok, tokens[row], sources[row], TokenSource.POLICY,
                             TokenSource.INJECTED)
            injected = _text(tok, tokens[row], sources[row], TokenSource.INJECTED)
            doc = "Paris is the capital and most populous city of France"
            assert doc in injected, mode
            start = response.index(doc)
            assert response.rfind("<information>", 0, start) > response.rfind("</information>",
                                                                              0, start)
            assert response.index("</information>", start) > start
            assert injected.startswith("\n\n<information>Doc 1(Title: \"Paris\")")
            # Injected tokens and every <information> block are out of the loss; the query
            # and answer the policy wrote are in it.
            assert not mask[row][sources[row] == TokenSource.INJECTED].any()
            trained = tok.decode(tokens[row][mask[row] > 0].tolist())
            assert "Paris is the capital" not in trained and " city" not in trained
            assert "capital France" in trained and "<answer> Paris</answer>" in trained
    # Self mode: one pass, nothing injected, self-written information masked too.
    state = runs["self"].state
    assert runs["self"].turns == 1
    assert not (np.asarray(state.sources) == TokenSource.INJECTED).any()


@pytest.mark.slow
def test_continuation_keeps_the_trajectory_and_answers(runs, setup):
    _, tok, prompts = setup
    for mode, run in runs.items():
        tokens, sources = np.asarray(run.state.tokens), np.asarray(run.state.sources)
        for row in range(len(QUESTIONS)):
            response = _text(tok, tokens[row], sources[row], TokenSource.POLICY,
                             TokenSource.INJECTED)
            assert response.startswith("<think> need recall</think><search> capital France"
                                       "</search>"), mode
            assert response.endswith("<answer> Paris</answer>"), mode
        # The prompt was prefilled once and never again (no re-prefill on resume).
        prompt_slots = (sources == TokenSource.PROMPT).sum(axis=1)
        assert prompt_slots.tolist() == [len(p) for p in prompts], mode


def test_decision_rules():
    real = SearchPolicy(mode="real", max_turns=2)
    assert [wants_real(real, search_index=i, real_count=min(i, 2), entropy=0.0,
                       previous_entropy=None) for i in range(3)] == [True, True, False]
    k2 = SearchPolicy(mode="first_k_real", first_k=2, max_turns=3)
    assert [wants_real(k2, search_index=i, real_count=min(i, 2), entropy=0.0,
                       previous_entropy=None) for i in range(3)] == [True, True, False]
    assert injection_rounds(k2) == 2
    rise = SearchPolicy(mode="entropy_guided", max_turns=3)
    assert wants_real(rise, search_index=0, real_count=0, entropy=0.0, previous_entropy=None)
    assert wants_real(rise, search_index=1, real_count=1, entropy=0.5, previous_entropy=0.4)
    assert not wants_real(rise, search_index=1, real_count=1, entropy=0.4, previous_entropy=0.4)
    threshold = SearchPolicy(mode="entropy_guided", entropy_rule="threshold",
                             entropy_threshold=1.0)
    assert wants_real(threshold, search_index=1, real_count=1, entropy=1.5,
                      previous_entropy=2.0)
    assert not wants_real(threshold, search_index=1, real_count=1, entropy=0.5,
                          previous_entropy=0.1)
    assert not wants_real(SearchPolicy(mode="self"), search_index=0, real_count=0,
                          entropy=9.0, previous_entropy=None)
    with pytest.raises(ValueError, match="entropy_rule='up'"):
        SearchPolicy(mode="entropy_guided", entropy_rule="up")
    with pytest.raises(ValueError, match="mode='web'"):
        SearchPolicy(mode="web")


def test_last_query():
    text = b"<search> a </search><information>x</information><search>b c</search>"
    start, end = last_query(text)
    assert text[start:end] == b"b c"
    assert last_query(b"no search here") is None


@pytest.mark.slow
def test_failed_searches_fall_back_to_self_written(setup, make_stub):
    sampler, tok, prompts = setup
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    with make_stub(lambda body: (503, {"detail": "down"})) as url:
        with SearchClient(url, max_retries=0, on_failure="fallback") as client:
            run = search_rollout(sampler, prompts[:1], policy=SearchPolicy(mode="real"),
                                 client=client, encode=encode, max_new_tokens=64,
                                 sampling=GREEDY, stop_strings=("</answer>",))
    assert run.failed_searches.tolist() == [2] and run.real_searches.tolist() == [0]
    assert not (np.asarray(run.state.sources) == TokenSource.INJECTED).any()
