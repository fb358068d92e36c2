"""Search-R1's turn rules: a real search's turn ends exactly at </search>, its agent loop
(answer ends a row, invalid actions get its feedback text, a last turn after max_turns), on the
scripted searching model (search_model.py) against a real server on loopback."""

import numpy as np
import pytest

from ssrl_jax.sampler import GREEDY, TokenSource
from ssrl_jax.protocol import INVALID_ACTION_OBSERVATION
from ssrl_jax.search.client import SearchClient
from ssrl_jax.search.rollout import SearchPolicy, search_rollout
from ssrl_jax.search.turns import first_action, kept_bytes, retokenize
from tests.search.search_model import searching_sampler
from tests.short_prompts import short_prompt_ids

QUESTIONS = ["What is the capital of France?", "Which river is the largest?"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    sampler, tok = searching_sampler(tmp_path_factory.mktemp("searching_model"))
    prompts = [short_prompt_ids(q, tok) for q in QUESTIONS]
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    return sampler, tok, prompts, encode


def _rollout(setup, url, **policy):
    sampler, _, prompts, encode = setup
    with SearchClient(url, topk=2) as client:
        return search_rollout(sampler, prompts, policy=SearchPolicy(**policy), client=client,
                              encode=encode, max_new_tokens=96, sampling=GREEDY,
                              stop_strings=("</answer>",))


def _response(tok, run, row):
    tokens, sources = np.asarray(run.state.tokens[row]), np.asarray(run.state.sources[row])
    keep = np.isin(sources, [TokenSource.POLICY, TokenSource.INJECTED])
    return tok.decode(tokens[keep].tolist()), tokens[keep], sources[keep]


def test_first_action_is_searchr1s_leftmost_pair():
    assert first_action(b"<think>x</think><search> a b </search>") == ("search", (24, 29))
    assert first_action(b"<answer>y</answer> then <search>q</search>")[0] == "answer"
    assert first_action(b"<search>q</answer>") is None       # tags must pair
    assert first_action(b"<search>a\nb</search>")[1] == (8, 11)  # dot-all
    assert first_action(b"just text") is None


def test_kept_bytes_cuts_only_past_a_tag_in_the_last_token():
    assert kept_bytes(b"<search>q</search>\n\n", 3, ["</search>"]) == 1   # token ">\n\n"
    assert kept_bytes(b"<search>q</search>\n\n", 4, ["</search>"]) == 2   # token "h>\n\n"
    assert kept_bytes(b"<search>q</search>", 3, ["</search>"]) is None    # nothing after
    assert kept_bytes(b"<search>q</search>\nx", 2, ["</search>"]) is None  # tag not in it
    assert kept_bytes(b"a</answer> b", 12, ["</search>", "</answer>"]) == 10


def test_retokenize_round_trips_exactly(setup):
    sampler, _, _, encode = setup
    ids = retokenize(b"</search>", encode, sampler.token_bytes)
    assert b"".join(sampler.token_bytes[i] for i in ids) == b"</search>"
    # Bytes that are not valid UTF-8 still get exact ids (greedy over the vocabulary's bytes).
    ids = retokenize(b"\xc3", encode, sampler.token_bytes)
    assert ids is not None and b"".join(sampler.token_bytes[i] for i in ids) == b"\xc3"


@pytest.mark.slow
def test_a_real_search_turn_ends_exactly_at_the_tag(setup, server_url):
    _, tok, _, _ = setup
    run = _rollout(setup, server_url, mode="real", max_turns=3, max_info_tokens=48)
    assert run.real_searches.tolist() == [3, 3]
    for row in range(len(QUESTIONS)):
        text, tokens, sources = _response(tok, run, row)
        # The model's second query closes with the token "</search>\n"; answered for real,
        # the "\n" is dropped: the observation follows the tag directly, as in Search-R1.
        assert " river flows</search>\n\n<information>" in text
        assert "</search>\n\n\n<information>" not in text
        # The re-tokenised tag is the policy's text (trained on), the documents are not.
        tag = tok.convert_tokens_to_ids("</search>")
        replaced = np.flatnonzero((tokens == tag) & (sources == TokenSource.POLICY))
        assert replaced.size == 3  # query 1's own tag + the 2 cut ones of query 2
        # Every retrieved block follows its tag directly (3 real searches); the query written
        # after the last one is self-answered and keeps its "</search>\n" token.
        assert text.count("</search>\n\n<information>Doc 1") == 3
        assert text.endswith(" river flows</search>\n\n<information> water </information>"
                             "<answer> Paris</answer>")


@pytest.mark.slow
def test_search_r1_loop_turns_and_last_turn(setup, server_url):
    _, tok, _, _ = setup
    run = _rollout(setup, server_url, mode="real", max_turns=2, max_info_tokens=48,
                   protocol="search_r1", turn_tokens=40)
    assert run.real_searches.tolist() == [2, 2]
    assert run.invalid_actions.tolist() == [0, 0]
    assert run.turns == 3  # two action turns, then the last turn
    for row in range(len(QUESTIONS)):
        text, tokens, sources = _response(tok, run, row)
        assert text.startswith("<think> need recall</think><search> capital France</search>"
                               "\n\n<information>Doc 1(Title: \"Paris\")")
        # The last turn searches again: not answered, cut at its tag, and the row ends.
        assert text.endswith("</information>\n\n\n<search> river flows</search>")
        assert [q.outcome for q in run.queries[row]] == ["real", "real"]
        assert run.queries[row][1].query == "river flows"


@pytest.mark.slow
def test_search_r1_invalid_action_gets_its_feedback(setup, server_url):
    _, tok, _, encode = setup
    # Three tokens per turn: "<think> need recall" has no action; Search-R1 answers with its
    # fixed feedback and the row goes on to its last turn.
    run = _rollout(setup, server_url, mode="real", max_turns=1, max_info_tokens=48,
                   protocol="search_r1", turn_tokens=3)
    assert run.invalid_actions.tolist() == [1, 1]
    assert run.real_searches.tolist() == [0, 0]
    assert run.turns == 2 and run.decode_steps <= 6
    for row in range(len(QUESTIONS)):
        _, tokens, sources = _response(tok, run, row)
        injected = tokens[sources == TokenSource.INJECTED].tolist()
        assert injected == encode(INVALID_ACTION_OBSERVATION)
        assert tok.decode(tokens[:3].tolist()) == "<think> need recall"
    assert run.metrics()["invalid_actions"] == 1.0


def test_policy_fields_are_checked():
    with pytest.raises(ValueError, match="protocol='searchr1'"):
        SearchPolicy(mode="real", protocol="searchr1")
    with pytest.raises(ValueError, match="turn_tokens=-1"):
        SearchPolicy(mode="real", turn_tokens=-1)
