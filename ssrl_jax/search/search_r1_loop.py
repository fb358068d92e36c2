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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ssrl_jax.protocol import (ANSWER_CLOSE, INFO_PREFIX, INFO_SUFFIX, INVALID_ACTION_OBSERVATION,
                               SEARCH_CLOSE)
from ssrl_jax.sampler.sources import FinishReason
from ssrl_jax.search.rollout import (Encode, QueryRecord, SearchPolicy, SearchRollout, _response,
                                     cut_at_tag, query_entropy, rollout_cache_len, wants_real,
                                     written_searches)
from ssrl_jax.search.turns import first_action

TURN_TAGS = (SEARCH_CLOSE, ANSWER_CLOSE)


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
    prefix, suffix = encode(INFO_PREFIX), encode(INFO_SUFFIX)
    feedback = encode(INVALID_ACTION_OBSERVATION)
    if cache_len is None:
        cache_len = rollout_cache_len(sampler, prompts, policy=policy,
                                      max_new_tokens=max_new_tokens, encode=encode)
    n = len(prompts)
    counts = {k: np.zeros(n, np.int64) for k in ("real", "failed", "invalid", "actions",
                                                 "searches")}
    previous: list[float | None] = [None] * n
    queries: list[list[QueryRecord]] = [[] for _ in range(n)]
    ended = np.zeros(n, bool)

    def budget(steps):
        left = max_new_tokens - steps
        return min(policy.turn_tokens, left) if policy.turn_tokens else left

    state = sampler.generate(prompts, max_new_tokens=budget(0), cache_len=cache_len,
                             sampling=sampling, seed=seed, keys=keys, stop_strings=stops)
    steps, turns = int(state.num_steps), 1
    while True:
        tokens, sources, entropies, finish, end, num_steps = jax.device_get(
            (state.tokens, state.sources, state.entropies, state.finish_reason,
             state.cache.end, state.num_steps))
        first_decoded = int(end) - int(num_steps)   # this turn's first decode slot
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
            turn_start = int(byte_lengths[ids[slots < first_decoded]].sum())
            action = first_action(text[turn_start:])
            if (counts["actions"][b] >= policy.max_turns or steps >= max_new_tokens
                    or (action is not None and action[0] == "answer")):
                ended[b] = True
                replace[b] = cut
                continue
            counts["actions"][b] += 1
            resume[b] = True
            if action is None:
                counts["invalid"][b] += 1
                injected[b] = feedback
                replace[b] = [] if finish[b] == FinishReason.EOS else cut
                continue
            span = (turn_start + action[1][0], turn_start + action[1][1])
            query = text[span[0]:span[1]].decode("utf-8", "replace").strip()
            entropy = query_entropy(byte_lengths[ids], sources[b, slots], entropies[b, slots],
                                    span)
            go = wants_real(policy, search_index=int(counts["searches"][b]),
                            real_count=int(counts["real"][b]), entropy=entropy,
                            previous_entropy=previous[b])
            counts["searches"][b] += 1
            previous[b] = entropy
            records[b] = (query, entropy, "self")
            if go:
                real_rows.append(b)
                real_queries.append(query)
                replace[b] = cut
        for b, result in zip(real_rows, client.search(real_queries) if real_rows else ()):
            if result.failed:
                counts["failed"][b] += 1
                records[b] = records[b][:2] + ("failed",)
                replace[b] = None   # the model writes the information itself
                continue
            counts["real"][b] += 1
            records[b] = records[b][:2] + ("real",)
            injected[b] = prefix + encode(result.text)[:policy.max_info_tokens] + suffix
        for b, record in records.items():
            queries[b].append(QueryRecord(*record))
        if not resume.any():
            if any(r for r in replace if r):  # the last turns' cuts; nothing decodes
                state = sampler.resume(state, injected, max_new_tokens=0, resume_rows=resume,
                                       replace_last=replace, end_rows=ended,
                                       sampling=sampling, stop_strings=stops)
            break
        state = sampler.resume(state, injected, max_new_tokens=budget(steps), resume_rows=resume,
                               replace_last=replace, end_rows=ended, sampling=sampling,
                               stop_strings=stops)
        steps += int(state.num_steps)
        turns += 1

    written = written_searches(state, token_bytes)
    return SearchRollout(state=state, real_searches=counts["real"],
                         self_searches=np.maximum(written - counts["real"] - counts["failed"], 0),
                         failed_searches=counts["failed"], dropped_searches=np.zeros(n, np.int64),
                         invalid_actions=counts["invalid"], queries=queries, turns=turns,
                         decode_steps=steps)
