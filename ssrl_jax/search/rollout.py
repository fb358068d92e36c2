"""Multi-turn search with a real retriever (SPEC §2, §7): the policy and a host-driven loop.

Training and evaluation run these turns inside one compiled program
(`compiled_rollout.make_compiled_search`; `sampler_search.SamplerSearch` on token-id prompts).
`search_rollout` below is the same turns driven from Python through `Sampler.generate` /
`Sampler.resume`: easy to step through, and the reference the compiled program is tested
against (tests/search/test_compiled_rollout.py).

    policy = SearchPolicy(mode="entropy_guided", max_turns=2)
    out = search_rollout(sampler, prompts, policy=policy, client=client, encode=encode,
                         max_new_tokens=512, sampling=sampling, keys=keys)
    out.state            # DecodeState [N, S]: tokens / sources / logprobs / entropies
    out.real_searches    # [N] searches the retriever answered, per row

Modes (``SearchPolicy.mode``):

- ``self``: SSRL. One generation pass; the model writes every ``<information>`` itself.
- ``real``: Search-R1. Every search (up to ``max_turns``) is answered by the retriever.
- ``first_k_real``: Sim2Real. A row's first ``first_k`` searches are real, later ones
  self-written.
- ``entropy_guided``: the first search is real; a later one is real only when the mean
  entropy of the full next-token distribution over its query tokens rose against the
  previous query of the same row (``entropy_rule="rise"``) or exceeds
  ``entropy_threshold`` (``"threshold"``).

The loop: generate with the stop string ``</search>`` (plus EOS and any caller stops). Each
call runs until every row has stopped, so after call t every live row has written its t-th
query. For each row stopped at ``</search>`` the query (body of its last
``<search>…</search>``) is read from the tokens' bytes and the policy decides. All real
queries of the turn go to the retriever in one ``SearchClient.search`` call; their rows get
``"\\n\\n<information>" + documents + "</information>\\n\\n"`` (Search-R1's observation
string; documents cut to ``max_info_tokens``) appended as INJECTED tokens to their KV cache,
and every stopped row resumes (``Sampler.resume``: no re-prefill). A row whose search is not
real resumes with nothing injected and writes its own ``<information>``; the sampler
restarts its stop automaton, so only new text can stop it again. A failed search (client
policy ``fallback``) is left to the model the same way and counted. Once no live row can
have another real search, ``</search>`` is dropped from the stop strings. The per-turn
decisions are `turn_plan.plan_turn`, which the compiled rollout (`compiled_rollout.py`, the same
turns inside one jitted program) shares.

A real search's turn ends exactly at ``</search>``: bytes the tag's last token carried past it
(a BPE token such as ``>\n\n``) are dropped, the kept bytes re-tokenised in the token's place
(label POLICY), as Search-R1 cuts and re-tokenises its turns (``turns.py``).

``SearchPolicy.protocol="search_r1"`` runs Search-R1's own agent loop instead
(``search_r1_loop.py``): a turn ends at ``</search>``, ``</answer>``, EOS or ``turn_tokens``;
its first complete ``<search>``/``<answer>`` is its action; an answer ends the row, an invalid
action is answered with Search-R1's feedback text, and after ``max_turns`` action turns one
last turn without search ends the row.

Budgets: rows decode in lockstep, so ``max_new_tokens`` bounds the decode steps of all calls
together (each row writes at most that many tokens). The cache holds
``prompt bucket + max_new_tokens + rounds × injection bucket`` slots, with room for
``injection_rounds(policy)`` rounds that inject; a real search in a later round (possible only
in ``entropy_guided`` mode, where rows go real in different rounds) is left to the model and
counted as ``dropped``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ssrl_jax.protocol import (INFO_PREFIX, INFO_SUFFIX, INVALID_ACTION_OBSERVATION, SEARCH_CLOSE,
                               SEARCH_OPEN)
from ssrl_jax.sampler.buckets import bucket_length
from ssrl_jax.sampler.sources import TokenSource
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.search.turns import CUT_ROOM, kept_bytes, retokenize

__all__ = ["ENTROPY_RULES", "MODES", "PROTOCOLS", "QueryRecord", "SearchPolicy", "SearchRollout",
           "injection_rounds", "last_query", "query_entropy", "search_rollout", "wants_real"]

MODES = ("self", "real", "first_k_real", "entropy_guided")
ENTROPY_RULES = ("rise", "threshold")
PROTOCOLS = ("free", "search_r1")

Encode = Callable[[str], list[int]]


@dataclasses.dataclass(frozen=True)
class SearchPolicy:
    """Which searches the retriever answers. Errors name the field."""

    mode: str = "self"
    max_turns: int = 2            # real searches per row at most
    first_k: int = 1              # first_k_real: K
    entropy_rule: str = "rise"    # entropy_guided: "rise" or "threshold"
    entropy_threshold: float = 0.0
    max_info_tokens: int = 500    # document tokens injected per search (Search-R1: 500)
    # free: a row runs to EOS, searches stop it; search_r1: Search-R1's agent loop.
    protocol: str = "free"
    turn_tokens: int = 0          # search_r1: policy tokens per turn at most (0: no cap)

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}={getattr(self, field)!r}: must be {allowed}")

        need(self.mode in MODES, "mode", f"one of {MODES}")
        need(isinstance(self.max_turns, int) and self.max_turns >= 1, "max_turns",
             "an integer >= 1")
        need(isinstance(self.first_k, int) and self.first_k >= 1, "first_k", "an integer >= 1")
        need(self.entropy_rule in ENTROPY_RULES, "entropy_rule", f"one of {ENTROPY_RULES}")
        need(isinstance(self.entropy_threshold, (int, float))
             and math.isfinite(self.entropy_threshold), "entropy_threshold", "a finite number")
        need(isinstance(self.max_info_tokens, int) and self.max_info_tokens >= 1,
             "max_info_tokens", "an integer >= 1")
        need(self.protocol in PROTOCOLS, "protocol", f"one of {PROTOCOLS}")
        need(isinstance(self.turn_tokens, int) and self.turn_tokens >= 0, "turn_tokens",
             "an integer >= 0")

    @classmethod
    def from_config(cls, config: Any) -> "SearchPolicy":
        """The policy of a run config: `rollout.mode` and the `search` section."""
        s = config.search
        return cls(mode=config.rollout.mode, max_turns=s.max_turns, first_k=s.first_k,
                   entropy_rule=s.entropy_rule, entropy_threshold=float(s.entropy_threshold),
                   max_info_tokens=s.max_info_tokens, protocol=s.protocol,
                   turn_tokens=s.turn_tokens)

    @property
    def real_limit(self) -> int:
        """Real searches a row may have in this mode."""
        if self.mode == "self":
            return 0
        return min(self.first_k, self.max_turns) if self.mode == "first_k_real" else self.max_turns


def injection_rounds(policy: SearchPolicy) -> int:
    """Turns with injected documents the cache has room for (see the module docstring).

    The search_r1 loop injects (documents or feedback) at most once per action turn."""
    return policy.max_turns if policy.protocol == "search_r1" else policy.real_limit


def wants_real(policy: SearchPolicy, *, search_index: int, real_count: int, entropy: float,
               previous_entropy: float | None) -> bool:
    """Whether a row's search number `search_index` (0-based) goes to the retriever."""
    if real_count >= policy.real_limit:
        return False
    if policy.mode == "real":
        return True
    if policy.mode == "first_k_real":
        return search_index < policy.first_k
    if policy.mode == "entropy_guided":
        if search_index == 0 or previous_entropy is None:
            return True
        if policy.entropy_rule == "rise":
            return entropy > previous_entropy
        return entropy > policy.entropy_threshold
    return False


def last_query(text: bytes) -> tuple[int, int] | None:
    """Byte span [start, end) of the body of the last ``<search>…</search>`` in `text`."""
    close = text.rfind(SEARCH_CLOSE.encode())
    if close < 0:
        return None
    start = text.rfind(SEARCH_OPEN.encode(), 0, close)
    return None if start < 0 else (start + len(SEARCH_OPEN.encode()), close)


def query_entropy(lengths: np.ndarray, sources: np.ndarray, entropies: np.ndarray,
                  span: tuple[int, int]) -> float:
    """Mean entropy of the POLICY tokens with a byte inside `span` (0.0 if none).

    lengths / sources / entropies: [T] for a row's response tokens, in order.
    """
    ends = np.cumsum(lengths)
    starts = ends - lengths
    inside = (starts < span[1]) & (ends > span[0]) & (sources == TokenSource.POLICY)
    return float(entropies[inside].mean()) if inside.any() else 0.0


@dataclasses.dataclass(frozen=True)
class QueryRecord:
    """One search of a row: its query, mean query entropy and what answered it."""

    query: str
    entropy: float
    outcome: str  # "real", "self", "failed" (retriever failed; self-written), "dropped"


@dataclasses.dataclass
class SearchRollout:
    """The trajectories ([N, S] slots as in `DecodeState`) and per-row search counts.

    real / failed / dropped count the searches the loop decided on; self_searches is every
    other ``</search>`` the row wrote (self-written information, also in ``self`` mode);
    invalid_actions: turns answered with the invalid-action feedback (search_r1 protocol).
    """

    state: DecodeState
    real_searches: np.ndarray     # [N] int
    self_searches: np.ndarray     # [N] int
    failed_searches: np.ndarray   # [N] int
    dropped_searches: np.ndarray  # [N] int
    invalid_actions: np.ndarray   # [N] int
    queries: list[list[QueryRecord]]
    turns: int                    # sampler calls
    decode_steps: int             # decode iterations of all calls

    def metrics(self) -> dict[str, float]:
        """Means per response, plus the turn and step counts."""
        return {"real_searches": float(self.real_searches.mean()),
                "self_searches": float(self.self_searches.mean()),
                "failed_searches": float(self.failed_searches.mean()),
                "dropped_searches": float(self.dropped_searches.mean()),
                "invalid_actions": float(self.invalid_actions.mean()),
                "search_turns": float(self.turns),
                "decode_steps": float(self.decode_steps)}


def _response(tokens: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Slot indices of a row's response tokens (policy-written and injected), in order."""
    return np.flatnonzero((sources == TokenSource.POLICY) | (sources == TokenSource.INJECTED))


def search_rollout(sampler: Any, prompts: Sequence[Sequence[int]], *, policy: SearchPolicy,
                   client: Any, encode: Encode, max_new_tokens: int, sampling: Any,
                   keys: jax.Array | None = None, seed: int = 0,
                   stop_strings: Sequence[str] = (), cache_len: int | None = None
                   ) -> SearchRollout:
    """Runs the turn loop (module docstring) for `prompts` (N token-id lists).

    sampler: a `ssrl_jax.sampler.Sampler` with token texts; client: a `SearchClient` (may be
    None in ``self`` mode); encode: text -> token ids without special tokens. stop_strings:
    extra stops (e.g. ``</answer>``) that end a row. cache_len: default
    `rollout_cache_len(...)`.
    """
    if policy.protocol == "search_r1":
        from ssrl_jax.search.search_r1_loop import search_r1_rollout

        return search_r1_rollout(sampler, prompts, policy=policy, client=client, encode=encode,
                                 max_new_tokens=max_new_tokens, sampling=sampling, keys=keys,
                                 seed=seed, stop_strings=stop_strings, cache_len=cache_len)
    token_bytes = sampler.token_bytes
    if token_bytes is None:
        raise ValueError("search_rollout needs a Sampler built with tokenizer= or token_bytes=")
    if policy.mode != "self" and client is None:
        raise ValueError(f"mode={policy.mode!r} needs a SearchClient")
    from ssrl_jax.search.turn_plan import RowCounters, plan_turn, search_stopped, still_searching

    byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    extra_stops = tuple(s for s in stop_strings if s != SEARCH_CLOSE)
    if cache_len is None:
        cache_len = rollout_cache_len(sampler, prompts, policy=policy,
                                      max_new_tokens=max_new_tokens, encode=encode)
    n = len(prompts)
    counters = RowCounters.zeros(n)
    queries: list[list[QueryRecord]] = [[] for _ in range(n)]

    searching = policy.real_limit > 0
    stops = ((SEARCH_CLOSE,) + extra_stops) if searching else extra_stops
    state = sampler.generate(prompts, max_new_tokens=max_new_tokens, cache_len=cache_len,
                             sampling=sampling, seed=seed, keys=keys, stop_strings=stops)
    steps, turns, rounds = int(state.num_steps), 1, 0
    while searching and steps < max_new_tokens:
        finish, matched = jax.device_get((state.finish_reason, state.matched_stop))
        if not search_stopped(finish, matched).any():
            break
        tokens, sources, entropies = jax.device_get(
            (state.tokens, state.sources, state.entropies))
        plan = plan_turn(tokens, sources, entropies, finish, matched, counters, rounds=rounds,
                         policy=policy, client=client, encode=encode, token_bytes=token_bytes,
                         byte_lengths=byte_lengths)
        counters = plan.counters
        rounds += int(plan.asked.any())
        for b, record in enumerate(plan.records):
            if record is not None:
                queries[b].append(record)
        searching = bool(still_searching(jax.device_get(state.done), plan.resume,
                                         counters.real, policy.real_limit))
        stops = ((SEARCH_CLOSE,) + extra_stops) if searching else extra_stops
        state = sampler.resume(state, plan.documents, max_new_tokens=max_new_tokens - steps,
                               resume_rows=plan.resume, sampling=sampling, stop_strings=stops,
                               replace_last=plan.replace_last)
        steps += int(state.num_steps)
        turns += 1

    real, failed, dropped = counters.real, counters.failed, counters.dropped
    written = written_searches(state, token_bytes)
    return SearchRollout(state=state, real_searches=real,
                         self_searches=np.maximum(written - real - failed - dropped, 0),
                         failed_searches=failed, dropped_searches=dropped,
                         invalid_actions=np.zeros(n, np.int64), queries=queries,
                         turns=turns, decode_steps=steps)


def written_searches(state: Any, token_bytes: Sequence[bytes]) -> np.ndarray:
    """int [B]: the `</search>` tags each row's policy tokens wrote, real or not."""
    tokens, sources = jax.device_get((state.tokens, state.sources))
    close = SEARCH_CLOSE.encode()
    return np.array([b"".join(token_bytes[t] for t in row[src == TokenSource.POLICY]).count(close)
                     for row, src in zip(tokens, sources)])


def cut_at_tag(tokens: np.ndarray, sources: np.ndarray, token_bytes: Sequence[bytes],
               encode: Encode, tags: Sequence[str]) -> list[int] | None:
    """The ids that replace a row's last token so that its text ends right at a tag (see
    `turns.kept_bytes`), or None to keep the token (nothing past the tag, or no exact
    re-tokenisation). tokens, sources: [S], one row."""
    slots = _response(tokens, sources)
    if slots.size == 0:
        return None
    ids = tokens[slots]
    text = b"".join(token_bytes[t] for t in ids)
    last = token_bytes[ids[-1]]
    keep = kept_bytes(text, len(last), tags)
    return None if keep is None else retokenize(last[:keep], encode, token_bytes)


def injection_bucket(sampler: Any, policy: SearchPolicy, encode: Encode) -> int:
    """Slots one injection takes at most (the sampler pads injections to its buckets): the
    documents or the feedback text, after the tokens of a cut turn's last token."""
    return injection_width(policy, encode, sampler.inject_buckets)


def injection_width(policy: SearchPolicy, encode: Encode,
                    inject_buckets: Sequence[int] | None = None) -> int:
    """`injection_bucket` for the injection buckets `inject_buckets` (None: the sampler's
    default powers of two)."""
    longest = len(encode(INFO_PREFIX)) + policy.max_info_tokens + len(encode(INFO_SUFFIX))
    if policy.protocol == "search_r1":
        longest = max(longest, len(encode(INVALID_ACTION_OBSERVATION)))
    return _bucket_of(inject_buckets, longest + CUT_ROOM)


def _bucket(sampler: Any, length: int) -> int:
    return _bucket_of(sampler.inject_buckets, length)


def _bucket_of(inject_buckets: Sequence[int] | None, length: int) -> int:
    from ssrl_jax.sampler.sampler import INJECT_MIN_BUCKET

    return bucket_length(length, inject_buckets, minimum=INJECT_MIN_BUCKET,
                         name="inject_buckets")


def rollout_cache_len(sampler: Any, prompts: Sequence[Sequence[int]], *, policy: SearchPolicy,
                      max_new_tokens: int, encode: Encode) -> int:
    """Cache slots per row: prompt bucket + max_new_tokens + room for the injections."""
    prompt_len = bucket_length(max(len(p) for p in prompts), sampler.prompt_buckets,
                               name="prompt_buckets")
    room = injection_rounds(policy) * injection_bucket(sampler, policy, encode) \
        if policy.real_limit or policy.protocol == "search_r1" else 0
    if policy.protocol == "search_r1":  # the last turn's cut, nothing injected after it
        room += _bucket(sampler, CUT_ROOM)
    return prompt_len + max_new_tokens + room
