"""The compiled search rollout (search/compiled_rollout.py) against the host loop
(`search_rollout`): a real server on loopback, the scripted searching model (search_model.py),
the same rows and per-row keys, greedy and sampled, with and without a mesh."""

import jax
import numpy as np
import pytest

from ssrl_jax.eval.selfsearch import load_for_eval
from ssrl_jax.sampler import GREEDY, Sampler, SamplingConfig, TokenSource, row_outputs
from ssrl_jax.sampler.sampler import row_keys
from ssrl_jax.search import compiled_rollout
from ssrl_jax.search.client import SearchClient
from ssrl_jax.search.compiled_rollout import make_compiled_search
from ssrl_jax.search.rollout import SearchPolicy, rollout_cache_len, search_rollout
from ssrl_jax.search.sampler_search import SamplerSearch
from ssrl_jax.sharding import ShardingRules, make_mesh
from tests.search.search_model import write_searching_model
from tests.short_prompts import short_prompt_ids

QUESTIONS = ["What is the capital of France?", "Which river is the largest?", "Where?",
             "Who painted it?"]
# Hot enough that rows leave the scripted path (a row may search once, twice or never, or run
# out of budget), so the rows' turns differ.
SAMPLED = SamplingConfig(temperature=4.0)
MAX_NEW_TOKENS = 64
STOPS = ("</answer>",)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(write_searching_model(tmp_path_factory.mktemp("searching_model")))


def _sampler(model_dir, mesh=None):
    model, tok, eos = load_for_eval(model_dir, dtype="float32", mesh=mesh)
    return Sampler(model, tokenizer=tok, eos_ids=eos), tok


@pytest.fixture(scope="module")
def setup(model_dir):
    sampler, tok = _sampler(model_dir)
    prompts = [short_prompt_ids(q, tok) for q in QUESTIONS]
    return sampler, tok, prompts


def _policy(mode):
    return SearchPolicy(mode=mode, max_turns=3, first_k=1, max_info_tokens=48)


def _encoder(tok):
    return lambda text: tok.encode(text, add_special_tokens=False)


def _host(sampler, tok, prompts, policy, client, sampling):
    return search_rollout(sampler, prompts, policy=policy, client=client, encode=_encoder(tok),
                          max_new_tokens=MAX_NEW_TOKENS, sampling=sampling,
                          keys=row_keys(0, len(prompts)), stop_strings=STOPS)


def _compiled(sampler, tok, prompts, policy, client, sampling):
    search = SamplerSearch(sampler, policy=policy, client=client, encode=_encoder(tok),
                           max_new_tokens=MAX_NEW_TOKENS, sampling=sampling, stop_strings=STOPS)
    return search(prompts, keys=row_keys(0, len(prompts)))


def _assert_same(host, compiled):
    for row, (h, c) in enumerate(zip(row_outputs(host.state), row_outputs(compiled.state))):
        np.testing.assert_array_equal(c.tokens, h.tokens, err_msg=f"row {row}")
        np.testing.assert_array_equal(c.sources, h.sources, err_msg=f"row {row}")
        np.testing.assert_allclose(c.logprobs, h.logprobs, atol=1e-5, err_msg=f"row {row}")
        np.testing.assert_allclose(c.entropies, h.entropies, atol=1e-5, err_msg=f"row {row}")
        assert (c.finish_reason, c.matched_stop) == (h.finish_reason, h.matched_stop), row
    for name in ("real_searches", "self_searches", "failed_searches", "dropped_searches",
                 "invalid_actions"):
        assert getattr(compiled, name).tolist() == getattr(host, name).tolist(), name
    assert (compiled.turns, compiled.decode_steps) == (host.turns, host.decode_steps)
    # The queries, their entropies and outcomes, as the callbacks recorded them per row.
    assert [[(q.query, q.outcome) for q in row] for row in compiled.queries] == \
        [[(q.query, q.outcome) for q in row] for row in host.queries]
    for c_row, h_row in zip(compiled.queries, host.queries):
        np.testing.assert_allclose([q.entropy for q in c_row], [q.entropy for q in h_row],
                                   atol=1e-5)


# Every mode greedy; sampled, the mode whose rows go real in different rounds (the decisions
# themselves are `plan_turn`'s, shared with the host loop).
CASES = [(mode, "greedy") for mode in ("real", "first_k_real", "entropy_guided", "self")] + [
    ("entropy_guided", "sampled")]


@pytest.mark.slow
@pytest.mark.parametrize("mode,sampling", CASES)
def test_matches_the_host_loop(setup, server_url, mode, sampling):
    sampler, tok, prompts = setup
    config = GREEDY if sampling == "greedy" else SAMPLED
    with SearchClient(server_url, topk=2) as client:
        host = _host(sampler, tok, prompts, _policy(mode), client, config)
        host_queries = client.reset_counters()["queries"]
        compiled = _compiled(sampler, tok, prompts, _policy(mode), client, config)
        compiled_queries = client.reset_counters()["queries"]
    _assert_same(host, compiled)
    assert compiled_queries == host_queries == host.real_searches.sum()
    cache_len = rollout_cache_len(sampler, prompts, policy=_policy(mode),
                                  max_new_tokens=MAX_NEW_TOKENS, encode=_encoder(tok))
    assert compiled.state.tokens.shape[1] == host.state.tokens.shape[1] == cache_len
    if sampling == "greedy" and mode != "self":
        # The scripted path: every row searched for real and took documents in.
        assert (host.real_searches > 0).all()
        sources = np.asarray(compiled.state.sources)
        assert (sources == TokenSource.INJECTED).any(axis=1).all()
    if sampling == "sampled":
        # The rows went different ways, so the rounds served different subsets of rows.
        assert len(set(host.real_searches.tolist())) > 1 or host.decode_steps == MAX_NEW_TOKENS


# Search-R1's agent loop: (mode, sampling, max_turns, turn_tokens). max_turns=1 with 3-token
# turns gets the invalid-action feedback; the sampled ones end rows in different turns.
SEARCH_R1_CASES = [("real", "greedy", 2, 40), ("real", "greedy", 1, 3),
                   ("entropy_guided", "sampled", 3, 20), ("first_k_real", "sampled", 2, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("mode,sampling,max_turns,turn_tokens", SEARCH_R1_CASES)
def test_search_r1_protocol_matches_its_host_loop(setup, server_url, mode, sampling, max_turns,
                                                  turn_tokens):
    sampler, tok, prompts = setup
    config = GREEDY if sampling == "greedy" else SAMPLED
    policy = SearchPolicy(mode=mode, max_turns=max_turns, first_k=1, max_info_tokens=48,
                          protocol="search_r1", turn_tokens=turn_tokens)
    with SearchClient(server_url, topk=2) as client:
        host = _host(sampler, tok, prompts, policy, client, config)
        host_queries = client.reset_counters()["queries"]
        compiled = _compiled(sampler, tok, prompts, policy, client, config)
        compiled_queries = client.reset_counters()["queries"]
    _assert_same(host, compiled)
    assert compiled_queries == host_queries == host.real_searches.sum()
    cache_len = rollout_cache_len(sampler, prompts, policy=policy,
                                  max_new_tokens=MAX_NEW_TOKENS, encode=_encoder(tok))
    assert compiled.state.tokens.shape[1] == host.state.tokens.shape[1] == cache_len
    if turn_tokens == 3:
        assert compiled.invalid_actions.tolist() == [1] * len(prompts)
    elif sampling == "greedy":
        assert compiled.real_searches.tolist() == [max_turns] * len(prompts)


@pytest.mark.slow
def test_one_callback_per_shard_on_a_mesh(model_dir, server_url, monkeypatch):
    mesh = make_mesh({"data": 2}, jax.devices()[:2])
    sampler, tok = _sampler(model_dir, mesh)
    prompts = [short_prompt_ids(q, tok) for q in QUESTIONS]
    rows_seen = []
    plan_turn = compiled_rollout.plan_turn

    def recording_plan_turn(tokens, sources, *args, **kwargs):
        rows_seen.append(tuple(tuple(row[src == TokenSource.PROMPT].tolist())
                               for row, src in zip(np.asarray(tokens), np.asarray(sources))))
        return plan_turn(tokens, sources, *args, **kwargs)

    monkeypatch.setattr(compiled_rollout, "plan_turn", recording_plan_turn)
    policy = _policy("entropy_guided")
    with SearchClient(server_url, topk=2) as client:
        host = _host(sampler, tok, prompts, policy, client, GREEDY)
        host_queries = client.reset_counters()["queries"]
        assert not rows_seen  # the host loop does not go through the callback
        compiled = _compiled(sampler, tok, prompts, policy, client, GREEDY)
        compiled_queries = client.reset_counters()["queries"]
    _assert_same(host, compiled)
    assert compiled_queries == host_queries
    shards = {tuple(map(tuple, prompts[:2])), tuple(map(tuple, prompts[2:]))}
    rounds = compiled.turns - 1
    assert rounds >= 2
    # Each round called the host once per shard, with that shard's two rows only.
    assert len(rows_seen) == 2 * rounds
    assert set(rows_seen) == shards
    assert sorted(rows_seen) == sorted(list(shards) * rounds)


@pytest.mark.slow
def test_failed_searches_fall_back_to_self_written(setup, make_stub):
    sampler, tok, prompts = setup
    with make_stub(lambda body: (503, {"detail": "down"})) as url:
        with SearchClient(url, max_retries=0, on_failure="fallback",
                          max_consecutive_failures=0) as client:
            host = _host(sampler, tok, prompts[:2], _policy("real"), client, GREEDY)
            compiled = _compiled(sampler, tok, prompts[:2], _policy("real"), client, GREEDY)
    _assert_same(host, compiled)
    assert compiled.failed_searches.tolist() == [2, 2]
    assert compiled.real_searches.tolist() == [0, 0]
    assert not (np.asarray(compiled.state.sources) == TokenSource.INJECTED).any()


def test_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="mode='real' needs a SearchClient"):
        make_compiled_search(policy=SearchPolicy(mode="real"), client=None,
                             encode=lambda text: [], token_bytes=[b"a"], eos_ids=[0], pad_id=0,
                             max_new_tokens=8, sampling=GREEDY)
    # 2 rows on data=2 x tensor=2: each row pair would reach the retriever twice.
    with jax.set_mesh(make_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])):
        with pytest.raises(ValueError, match=r"mesh axes \['tensor'\]"):
            compiled_rollout._per_shard(lambda *args: args, 2, ShardingRules())


@pytest.mark.slow
def test_a_failing_retriever_under_policy_fail_stops_the_program(setup, make_stub):
    sampler, tok, prompts = setup
    with make_stub(lambda body: (503, {"detail": "down"})) as url:
        with SearchClient(url, max_retries=0, on_failure="fail") as client:
            # The client's SearchError (URL and cause) comes out of the callback.
            with pytest.raises(jax.errors.JaxRuntimeError, match=r"search at http\S+ failed"):
                _compiled(sampler, tok, prompts[:2], _policy("real"), client, GREEDY)
