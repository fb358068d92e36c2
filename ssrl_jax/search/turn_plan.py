"""One turn of a free-protocol search rollout, decided on the host for a shard of rows.

    plan = plan_turn(tokens, sources, entropies, finish_reason, matched_stop, counters,
                     rounds=rounds, policy=policy, client=client, encode=encode,
                     token_bytes=token_bytes)
    plan.resume            # [N] rows that stopped at </search>: they decode on
    plan.documents[b]      # ids injected into row b (empty: the row writes its own)
    ids, valid, policy_len, retract = pack_injection(plan, width, pad_id)

Both rollouts call this: the host loop (`rollout.search_rollout`, which hands
`plan.documents` / `plan.replace_last` to `Sampler.resume`) and the compiled rollout
(`compiled_rollout.py`, which calls it from a per-shard host callback and feeds
`pack_injection`'s fixed-size arrays to `decode_lib.inject`). A row's history travels as
`RowCounters` arrays, so a shard needs nothing but its own rows and the batch's `rounds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ssrl_jax.protocol import INFO_PREFIX, INFO_SUFFIX, SEARCH_CLOSE
from ssrl_jax.sampler.buckets import left_pad
from ssrl_jax.sampler.sources import FinishReason
from ssrl_jax.search.rollout import (QueryRecord, _response, cut_at_tag, injection_rounds,
                                     last_query, query_entropy, wants_real)

__all__ = ["RowCounters", "TurnPlan", "pack_injection", "plan_turn", "search_stopped",
           "still_searching"]

# The rollouts put `</search>` first among the stop strings, so it matches as index 0.
SEARCH_STOP_INDEX = 0


class RowCounters(NamedTuple):
    """A row's search history, [N] arrays (numpy on the host, jax arrays in the program).

    searches: `</search>` stops decided so far; real / failed / dropped: how they were
    answered (see `rollout.SearchRollout`); entropy: mean query entropy of the row's last
    decided search (meaningful once searches > 0).
    """

    searches: Any
    real: Any
    failed: Any
    dropped: Any
    entropy: Any

    @classmethod
    def zeros(cls, num_rows: int, int_dtype: Any = np.int64,
              float_dtype: Any = np.float64) -> "RowCounters":
        return cls(*(np.zeros(num_rows, int_dtype) for _ in range(4)),
                   np.zeros(num_rows, float_dtype))


@dataclasses.dataclass
class TurnPlan:
    """What a turn does to each row of the shard (N rows).

    resume: [N] bool, rows that stopped at `</search>` and decode on; asked: [N] bool, rows
    whose query went to the retriever (answered or failed); documents[b]: ids injected into
    row b (label INJECTED); replace_last[b]: ids that take the place of row b's last token
    (a real search's turn cut at `</search>`, `rollout.cut_at_tag`), or None; records[b]:
    the row's `QueryRecord` when it stopped, else None; counters: updated.
    """

    resume: np.ndarray
    asked: np.ndarray
    documents: list[list[int]]
    replace_last: list[list[int] | None]
    records: list[QueryRecord | None]
    counters: RowCounters


def search_stopped(finish_reason: np.ndarray, matched_stop: np.ndarray) -> np.ndarray:
    """[N] bool: the rows whose last call stopped at `</search>` (works on jax arrays too)."""
    return (finish_reason == FinishReason.STOP_STRING) & (matched_stop == SEARCH_STOP_INDEX)


def plan_turn(tokens: np.ndarray, sources: np.ndarray, entropies: np.ndarray,
              finish_reason: np.ndarray, matched_stop: np.ndarray, counters: RowCounters, *,
              rounds: int, policy: Any, client: Any, encode: Callable[[str], list[int]],
              token_bytes: Sequence[bytes], byte_lengths: np.ndarray | None = None
              ) -> TurnPlan:
    """Decides each row of a shard that stopped at `</search>` and asks the retriever once.

    tokens, sources, entropies: [N, S] decode-state slots; finish_reason, matched_stop: [N];
    counters: the rows' `RowCounters` (not modified); rounds: turns of the whole batch so far
    in which some query went to the retriever (past `injection_rounds(policy)` a real search
    is dropped, as the cache has no room for it); byte_lengths: [V] bytes of each token
    (computed from `token_bytes` when None).
    """
    tokens, sources, entropies = np.asarray(tokens), np.asarray(sources), np.asarray(entropies)
    if byte_lengths is None:
        byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    n = tokens.shape[0]
    searches, real, failed, dropped, previous = (np.array(c, copy=True) for c in counters)
    stopped = np.flatnonzero(search_stopped(np.asarray(finish_reason), np.asarray(matched_stop)))

    real_rows, real_queries, decided = [], [], {}
    for b in stopped:
        slots = _response(tokens[b], sources[b])
        ids = tokens[b, slots]
        text = b"".join(token_bytes[t] for t in ids)
        span = last_query(text)
        query = "" if span is None else text[span[0]:span[1]].decode("utf-8", "replace")
        entropy = 0.0 if span is None else query_entropy(
            byte_lengths[ids], sources[b, slots], entropies[b, slots], span)
        go = wants_real(policy, search_index=int(searches[b]), real_count=int(real[b]),
                        entropy=entropy,
                        previous_entropy=float(previous[b]) if searches[b] > 0 else None)
        searches[b] += 1
        previous[b] = entropy
        decided[b] = (query.strip(), entropy)
        if go:
            real_rows.append(b)
            real_queries.append(query)

    documents: list[list[int]] = [[] for _ in range(n)]
    replace_last: list[list[int] | None] = [None] * n
    asked = np.zeros(n, bool)
    outcome = {b: "self" for b in stopped}
    if real_rows and rounds >= injection_rounds(policy):
        for b in real_rows:
            outcome[b] = "dropped"
            dropped[b] += 1
    elif real_rows:
        asked[real_rows] = True
        prefix, suffix = encode(INFO_PREFIX), encode(INFO_SUFFIX)
        for b, result in zip(real_rows, client.search(real_queries)):
            if result.failed:
                outcome[b] = "failed"
                failed[b] += 1
                continue
            outcome[b] = "real"
            real[b] += 1
            documents[b] = prefix + encode(result.text)[:policy.max_info_tokens] + suffix
            replace_last[b] = cut_at_tag(tokens[b], sources[b], token_bytes, encode,
                                         (SEARCH_CLOSE,))

    records: list[QueryRecord | None] = [None] * n
    for b in stopped:
        records[b] = QueryRecord(decided[b][0], decided[b][1], outcome[b])
    resume = np.zeros(n, bool)
    resume[stopped] = True
    return TurnPlan(resume=resume, asked=asked, documents=documents, replace_last=replace_last,
                    records=records,
                    counters=RowCounters(searches, real, failed, dropped, previous))


def pack_injection(plan: Any, width: int, pad_id: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The plan (a `TurnPlan`, or `search_r1_loop.SearchR1Plan`: its `documents` and
    `replace_last`) as `decode_lib.inject`'s arrays, as `Sampler.resume` builds them but always
    `width` slots wide: (ids int32 [N, width], valid bool [N, width], each row's replacement
    then documents right-aligned; policy_len int32 [N], retract bool [N])."""
    rows = [list(r or ()) + list(d) for r, d in zip(plan.replace_last, plan.documents)]
    ids, valid = left_pad(rows, width, pad_id)
    retract = np.array([r is not None for r in plan.replace_last], bool)
    policy_len = np.array([len(r or ()) for r in plan.replace_last], np.int32)
    return ids, valid, policy_len, retract


def still_searching(done: Any, resume: Any, real: Any, real_limit: int) -> Any:
    """Whether some live row (running, or resumed this turn) may still search for real; when
    none can, `</search>` leaves the stop strings. numpy or jax arrays, [N] each."""
    return ((~done | resume) & (real < real_limit)).any()

