"""Search-R1's agent loop (`SearchPolicy.protocol="search_r1"`) on the sampler's continuation.

Search-R1 (`search_r1/llm_agent/generation.py`, `run_llm_loop`) runs `max_turns` action turns
and one last turn. Per turn every live row writes until the first ``</search>`` or
``</answer>``, EOS, or `turn_tokens` tokens (their `max_response_length`, 500); the text past
the tag is dropped (`turns.kept_bytes`, here by replacing the tag's last token). Then its
first complete ``<search>``/``<answer>`` pair decides (`turns.first_action`):

- answer: the row is done;
- search: the query is answered as the mode says (`wants_real`); a real answer is injected as
  ``"\\n\\n<information>" + docs + "</information>\\n\\n"``, a search that is not real (or
  failed under ``on_failure="fallback"``) resumes the row with nothing injected;
- neither (also a turn ended by EOS or by `turn_tokens`): the row gets
  `protocol.INVALID_ACTION_OBSERVATION` (injected; an EOS that ended the turn is taken out
  first, as Search-R1's decoding drops special tokens) and goes on.

A row whose `max_turns` action turns are used writes one last turn, cut the same way, and is
done. `max_new_tokens` bounds the decode steps of all turns together, as in `search_rollout`.
The per-turn decisions are `plan_search_r1_turn`, which the compiled rollout
(`compiled_search_r1.py`) shares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssrl_jax.protocol import (ANSWER_CLOSE, INFO_PREFIX, INFO_SUFFIX, INVALID_ACTION_OBSERVATION,
                               SEARCH_CLOSE)
from ssrl_jax.sampler.sources import FinishReason
from ssrl_jax.search.rollout import (Encode, QueryRecord, SearchPolicy, SearchRollout, _response,
                                     cut_at_tag, query_entropy, rollout_cache_len, wants_real,
                                     written_searches)
from ssrl_jax.search.turns import first_action

TURN_TAGS = (SEARCH_CLOSE, ANSWER_CLOSE)


class SearchR1Counters(NamedTuple):
    """A row's history in Search-R1's loop, [N] arrays (numpy, or jax arrays in the program).

    real / failed: searches answered / failed; invalid: turns with no action; actions: action
    turns used; searches: search actions decided; entropy: mean query entropy of the last one
    (meaningful once searches > 0).
    """

    real: Any
    failed: Any
    invalid: Any
    actions: Any
    searches: Any
    entropy: Any

    @classmethod
    def zeros(cls, num_rows: int, int_dtype: Any = np.int64,
              float_dtype: Any = np.float64) -> "SearchR1Counters":
        return cls(*(np.zeros(num_rows, int_dtype) for _ in range(5)),
                   np.zeros(num_rows, float_dtype))


@dataclasses.dataclass
class SearchR1Plan:
    """What one turn of Search-R1's loop does to each row of a shard (N rows).

    resume: [N] bool, rows that go on; ended: [N] bool, rows done (this turn or before);
    documents[b]: ids injected into row b (documents or the feedback text); replace_last[b]:
    ids that replace row b's last token (`Sampler.resume`), or None; records[b]: the row's
    `QueryRecord` when it searched this turn, else None; counters: updated.
    """

    resume: np.ndarray
    ended: np.ndarray
    documents: list[list[int]]
    replace_last: list[list[int] | None]
    records: list[QueryRecord | None]
    counters: SearchR1Counters


def plan_search_r1_turn(tokens: np.ndarray, sources: np.ndarray, entropies: np.ndarray,
                        finish_reason: np.ndarray, counters: SearchR1Counters,
                        ended: np.ndarray, *, first_decoded: np.ndarray, steps: int,
                        max_new_tokens: int, policy: SearchPolicy, client: Any, encode: Encode,
                        token_bytes: Sequence[bytes], byte_lengths: np.ndarray
                        ) -> SearchR1Plan:
    """Decides every live row of a shard after a turn (module docstring) and asks the
    retriever once for the shard's real queries.

    tokens, sources, entropies: [N, S]; finish_reason, ended: [N]; first_decoded: [N], each
    row's first slot decoded this turn (`DecodeState.decode_start`); steps: decode steps of all turns so far; byte_lengths: [V].
    """
    tokens, sources, entropies = np.asarray(tokens), np.asarray(sources), np.asarray(entropies)
    finish = np.asarray(finish_reason)
    first_decoded = np.asarray(first_decoded)
    n = tokens.shape[0]
    real, failed, invalid, actions, searches, previous = (np.array(c, copy=True)
                                                          for c in counters)
    ended = np.array(ended, bool, copy=True)
    injected: list[list[int]] = [[] for _ in range(n)]
    replace: list[list[int] | None] = [None] * n
    resume = np.zeros(n, bool)
    real_rows, real_queries, records = [], [], {}
    for b in np.flatnonzero(~ended):
        cut = (cut_at_tag(tokens[b], sources[b], token_bytes, encode, TURN_TAGS)
               if finish[b] == FinishReason.STOP_STRING else None)
        slots = _response(tokens[b], sources[b])
        ids = tokens[b, slots]
        text = b"".join(token_bytes[t] for t in ids)
        turn_start = int(byte_lengths[ids[slots < first_decoded[b]]].sum())
        action = first_action(text[turn_start:])
        if (actions[b] >= policy.max_turns or steps >= max_new_tokens
                or (action is not None and action[0] == "answer")):
            ended[b] = True
            replace[b] = cut
            continue
        actions[b] += 1
        resume[b] = True
        if action is None:
            invalid[b] += 1
            injected[b] = encode(INVALID_ACTION_OBSERVATION)
            replace[b] = [] if finish[b] == FinishReason.EOS else cut
            continue
        span = (turn_start + action[1][0], turn_start + action[1][1])
        query = text[span[0]:span[1]].decode("utf-8", "replace").strip()
        entropy = query_entropy(byte_lengths[ids], sources[b, slots], entropies[b, slots], span)
        go = wants_real(policy, search_index=int(searches[b]), real_count=int(real[b]),
                        entropy=entropy,
                        previous_entropy=float(previous[b]) if searches[b] > 0 else None)
        searches[b] += 1
        previous[b] = entropy
        records[b] = (query, entropy, "self")
        if go:
            real_rows.append(b)
            real_queries.append(query)
            replace[b] = cut
    if real_rows:
        prefix, suffix = encode(INFO_PREFIX), encode(INFO_SUFFIX)
        for b, result in zip(real_rows, client.search(real_queries)):
            if result.failed:
                failed[b] += 1
                records[b] = records[b][:2] + ("failed",)
                replace[b] = None   # the model writes the information itself
                continue
            real[b] += 1
            records[b] = records[b][:2] + ("real",)
            injected[b] = prefix + encode(result.text)[:policy.max_info_tokens] + suffix
    row_records: list[QueryRecord | None] = [None] * n
    for b, record in records.items():
        row_records[b] = QueryRecord(*record)
    return SearchR1Plan(resume=resume, ended=ended, documents=injected, replace_last=replace,
                        records=row_records,
                        counters=SearchR1Counters(real, failed, invalid, actions, searches,
                                                  previous))


def search_r1_rollout(sampler: Any, prompts: Sequence[Sequence[int]], *, policy: SearchPolicy,
                      client: Any, encode: Encode, max_new_tokens: int, sampling: Any,
                      keys: jax.Array | None = None, seed: int = 0,
                      stop_strings: Sequence[str] = (), cache_len: int | None = None
                      ) -> SearchRollout:
    """Runs Search-R1's loop (module docstring); arguments as `search_rollout`."""
    token_bytes = sampler.token_bytes
    if token_bytes is None:
        raise ValueError("search_r1_rollout needs a Sampler built with tokenizer= or "
                         "token_bytes=")
    if policy.real_limit and client is None:
        raise ValueError(f"mode={policy.mode!r} needs a SearchClient")
    byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    stops = TURN_TAGS + tuple(s for s in stop_strings if s not in TURN_TAGS)
    if cache_len is None:
        cache_len = rollout_cache_len(sampler, prompts, policy=policy,
                                      max_new_tokens=max_new_tokens, encode=encode)
    n = len(prompts)
    counters = SearchR1Counters.zeros(n)
    queries: list[list[QueryRecord]] = [[] for _ in range(n)]
    ended = np.zeros(n, bool)

    state = sampler.generate(prompts, max_new_tokens=turn_budget(policy, max_new_tokens, 0),
                             cache_len=cache_len, sampling=sampling, seed=seed, keys=keys,
                             stop_strings=stops)
    steps, turns = int(state.num_steps), 1
    while True:
        tokens, sources, entropies, finish, first_decoded = jax.device_get(
            (state.tokens, state.sources, state.entropies, state.finish_reason,
             state.decode_start))
        plan = plan_search_r1_turn(tokens, sources, entropies, finish, counters, ended,
                                   first_decoded=first_decoded, steps=steps,
                                   max_new_tokens=max_new_tokens, policy=policy, client=client,
                                   encode=encode, token_bytes=token_bytes,
                                   byte_lengths=byte_lengths)
        counters, ended = plan.counters, plan.ended
        for b, record in enumerate(plan.records):
            if record is not None:
                queries[b].append(record)
        if not plan.resume.any():
            if any(r for r in plan.replace_last if r):  # the last turns' cuts; nothing decodes
                state = sampler.resume(state, plan.documents, max_new_tokens=0,
                                       resume_rows=plan.resume, replace_last=plan.replace_last,
                                       end_rows=ended, sampling=sampling, stop_strings=stops)
            break
        state = sampler.resume(state, plan.documents,
                               max_new_tokens=turn_budget(policy, max_new_tokens, steps),
                               resume_rows=plan.resume, replace_last=plan.replace_last,
                               end_rows=ended, sampling=sampling, stop_strings=stops)
        steps += int(state.num_steps)
        turns += 1

    written = written_searches(state, token_bytes)
    return SearchRollout(state=state, real_searches=counters.real,
                         self_searches=np.maximum(written - counters.real - counters.failed, 0),
                         failed_searches=counters.failed, dropped_searches=np.zeros(n, np.int64),
                         invalid_actions=counters.invalid, queries=queries, turns=turns,
                         decode_steps=steps)


def turn_budget(policy: SearchPolicy, max_new_tokens: Any, steps: Any) -> Any:
    """Decode steps the next turn may take: what is left, at most `policy.turn_tokens`
    (ints, or jax scalars in the compiled rollout)."""
    left = max_new_tokens - steps
    if not policy.turn_tokens:
        return left
    return min(policy.turn_tokens, left) if isinstance(left, int) else \
        jnp.minimum(policy.turn_tokens, left)
