"""Search-R1's agent loop (protocol "search_r1") inside one compiled program.

Built by `compiled_rollout.make_compiled_search` for a policy with ``protocol="search_r1"``;
the turns are those of `search_r1_loop.search_r1_rollout`, decided by the same host function
(`search_r1_loop.plan_search_r1_turn`) from a per-shard `io_callback`. Each turn is a round
of a `lax.while_loop`: the host decides every live row (answer: done; search: documents or
nothing; no action: the feedback text; past `max_turns`: done, cut at its tag) and the device
injects, then decodes at most `turn_tokens` steps if some row goes on. The cache is
`rollout_cache_len`'s: `max_turns` injections W wide, then room C for the last turn's cuts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.kv_windows import kv_windows
from ssrl_jax.sampler.sampling import SamplingConfig
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.search.compiled_rollout import batch_row_ids, turn_io_callback, turn_outputs
from ssrl_jax.search.rollout import SearchPolicy, _bucket_of, injection_width
from ssrl_jax.search.search_r1_loop import (TURN_TAGS, SearchR1Counters, plan_search_r1_turn,
                                            turn_budget)
from ssrl_jax.search.turns import CUT_ROOM
from ssrl_jax.sharding import ShardingRules, constrain

# lax.switch branches of a round: what the host's plan asks the cache to take.
INJECT_NOTHING, INJECT_FULL, INJECT_CUTS, UNTOUCHED = range(4)


def search_r1_program(*, policy: SearchPolicy, client: Any, encode: Callable[[str], list[int]],
                      token_bytes: Sequence[bytes], eos_ids: Sequence[int], pad_id: int,
                      max_new_tokens: int, sampling: SamplingConfig, stop_strings: Sequence[str],
                      inject_buckets: Sequence[int] | None, layer_loop: bool,
                      kv_windows_count: int, rules: ShardingRules | None,
                      on_queries: Callable | None, stop_tables: Callable, per_shard: Callable,
                      counters_of: Callable
                      ) -> Callable[..., tuple[DecodeState, Any]]:
    """The traceable rollout (arguments and result as `make_compiled_search`'s)."""
    byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    width = injection_width(policy, encode, inject_buckets)
    cut_width = _bucket_of(inject_buckets, CUT_ROOM)
    room = policy.max_turns * width + cut_width
    stops = TURN_TAGS + tuple(s for s in stop_strings if s not in TURN_TAGS)
    (table,) = stop_tables((stops,), token_bytes)
    eos = np.asarray(eos_ids, np.int32)

    def host_turn(row_ids, tokens, sources, entropies, finish, real, failed, invalid, actions,
                  searches, entropy, ended, first_decoded, steps):
        plan = plan_search_r1_turn(
            tokens, sources, entropies, finish,
            SearchR1Counters(real, failed, invalid, actions, searches, entropy), ended,
            first_decoded=first_decoded, steps=int(steps), max_new_tokens=max_new_tokens,
            policy=policy, client=client, encode=encode, token_bytes=token_bytes,
            byte_lengths=byte_lengths)
        if on_queries is not None:
            on_queries(row_ids, plan.records)
        return turn_outputs(plan, plan.ended, width, pad_id)

    turn_callback = turn_io_callback(host_turn, width, int_counters=5)

    def rollout(model, ids, valid, keys):
        batch_rules = rules if rules is not None else (model.rules or ShardingRules())
        n, prompt_len = ids.shape
        cache_len = prompt_len + max_new_tokens + room
        stop_next, stop_completed = map(jnp.asarray, table)

        def decode(state, budget, windows):
            return decode_lib.decode(model, state, sampling=sampling, stop_next=stop_next,
                                     stop_completed=stop_completed, eos_ids=jnp.asarray(eos),
                                     max_new_tokens=budget, pad_id=pad_id,
                                     layer_loop=layer_loop, windows=windows)

        state = decode_lib.prefill(model, ids, valid, keys, cache_len)
        state = decode(state, jnp.int32(turn_budget(policy, max_new_tokens, 0)),
                       kv_windows(prompt_len, cache_len, kv_windows_count))
        zeros = jnp.zeros((n,), jnp.int32)
        counters = SearchR1Counters(*(zeros,) * 5, jnp.zeros((n,), jnp.float32))
        on_shards = per_shard(turn_callback, n, batch_rules)
        row_ids = batch_row_ids(n, batch_rules)
        resume_windows = kv_windows(0, cache_len, kv_windows_count)

        def round_(carry):
            state, counters, ended, steps, turns, _ = carry
            out = on_shards(row_ids, state.tokens, state.sources, state.entropies,
                            state.finish_reason, *counters, ended,
                            state.decode_start, steps)
            out = [constrain(x, ("batch",) + (None,) * (x.ndim - 1), batch_rules) for x in out]
            inject_ids, inject_valid, policy_len, retract, resume, ended = out[:6]
            counters = SearchR1Counters(*out[6:])
            going, injecting = jnp.any(resume), jnp.any(inject_valid)

            def inject(columns):
                return lambda s: decode_lib.inject(model, s, inject_ids[:, columns],
                                                   inject_valid[:, columns], resume, policy_len,
                                                   retract, ended)

            branch = jnp.where(going, jnp.where(injecting, INJECT_FULL, INJECT_NOTHING),
                               jnp.where(injecting, INJECT_CUTS, UNTOUCHED))
            state = jax.lax.switch(branch, [inject(slice(0, 0)), inject(slice(None)),
                                            inject(slice(width - cut_width, None)),
                                            lambda s: s], state)
            state = jax.lax.cond(
                going,
                lambda s: decode(s, turn_budget(policy, max_new_tokens, steps), resume_windows),
                # The host loop's last resume (cuts only) decodes nothing: num_steps 0.
                lambda s: dataclasses.replace(s, num_steps=jnp.where(injecting, 0, s.num_steps)),
                state)
            steps = steps + jnp.where(going, state.num_steps, 0)
            return state, counters, ended, steps, turns + going.astype(jnp.int32), going

        state, counters, ended, steps, turns, _ = jax.lax.while_loop(
            lambda carry: carry[-1], round_,
            (state, counters, jnp.zeros((n,), bool), state.num_steps, jnp.int32(1),
             jnp.bool_(True)))
        return state, counters_of(counters, turns, steps)

    return rollout
