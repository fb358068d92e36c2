"""Multi-turn search with a real retriever inside one compiled program.

    rollout = make_compiled_search(policy=policy, client=client, encode=encode,
                                   token_bytes=token_bytes, eos_ids=eos_ids, pad_id=pad_id,
                                   max_new_tokens=512, sampling=sampling)
    run = jax.jit(lambda params, ids, valid, keys:
                  rollout(nnx.merge(graphdef, params), ids, valid, keys))
    with jax.set_mesh(mesh):                       # optional: one callback per batch shard
        state, counters = run(params, ids, valid, keys)
    result = compiled_result(state, counters, token_bytes)   # host view, as search_rollout's

The program does what `rollout.search_rollout`'s host loop does, with the same decisions
(`turn_plan.plan_turn`): prefill, decode with the stop string `</search>` (plus EOS and the
caller's stops), then rounds in a `lax.while_loop` while some row stopped at `</search>`, the
decode budget is not spent and some live row may still search for real. A round hands the
rows to the host through `io_callback` (the retriever has side effects: it must run exactly
once per round and shard, never be dropped or repeated, which `pure_callback` allows),
placed per batch shard with `jax.shard_map` over the axes `rl.scoring.scoring_spec` picks,
so on any number of hosts each host serves only the rows it holds. The host decides its
rows, asks the retriever once for the shard's real queries and returns fixed-size arrays:
injection ids / valid [n, W] (W = `injection_width(policy, ...)`, the host loop's largest
bucket), the last-token replacement as `policy_len` / `retract`, `resume`, `asked` and the
updated counters. The documents are appended with `decode_lib.inject` (inside a `lax.cond`:
a round where nothing is injected writes no slots) and decoding resumes with the remaining
budget. The cache has `rollout_cache_len`'s room for `injection_rounds(policy)` injections;
a real search after that many rounds with retriever queries is "dropped", as in the host loop.

Rounds are a while loop rather than `injection_rounds` unrolled copies: self-written and
failed searches also stop a row (as in the host loop), so a batch may need more rounds than
it has injections; a round costs nothing unless some row stopped at `</search>`.

Protocol "search_r1" (Search-R1's agent loop) runs the same way, its turns decided by
`search_r1_loop.plan_search_r1_turn` (`compiled_search_r1.py`).

Outputs match `search_rollout` on the same rows and per-row keys (same tokens, sources and
log-probs per row; only the padding slots between turns differ, as every injection here is
W wide), tested in tests/search/test_compiled_rollout.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import PartitionSpec

from ssrl_jax.protocol import SEARCH_CLOSE
from ssrl_jax.rl.scoring import scoring_spec
from ssrl_jax.sampler import decode as decode_lib
from ssrl_jax.sampler.buckets import bucket_length
from ssrl_jax.sampler.kv_windows import DEFAULT_KV_WINDOWS, kv_windows
from ssrl_jax.sampler.sampling import SamplingConfig
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.sampler.stop import build_stop_table
from ssrl_jax.search.rollout import (QueryRecord, SearchPolicy, SearchRollout, injection_rounds,
                                     injection_width, written_searches)
from ssrl_jax.search.turn_plan import (RowCounters, pack_injection, plan_turn, search_stopped,
                                       still_searching)
from ssrl_jax.sharding import ShardingRules, constrain

__all__ = ["QueryLog", "SearchCounters", "compiled_result", "make_compiled_search"]

QueryHook = Callable[[np.ndarray, Sequence[QueryRecord | None]], None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SearchCounters:
    """What the compiled rollout counted. N rows.

    searches / real / failed / dropped: int32 [N], as `RowCounters`; invalid: int32 [N],
    turns answered with the invalid-action feedback (protocol search_r1); turns: int32 [], the
    sampler calls the host loop would have made; rounds: int32 [], rounds in which some query
    went to the retriever (protocol free; 0 for search_r1); decode_steps: int32 [], decode
    iterations of all turns together (<= max_new_tokens).
    """

    searches: jax.Array
    real: jax.Array
    failed: jax.Array
    dropped: jax.Array
    invalid: jax.Array
    turns: jax.Array
    rounds: jax.Array
    decode_steps: jax.Array


def make_compiled_search(*, policy: SearchPolicy, client: Any, encode: Callable[[str], list[int]],
                         token_bytes: Sequence[bytes], eos_ids: Sequence[int], pad_id: int,
                         max_new_tokens: int, sampling: SamplingConfig,
                         stop_strings: Sequence[str] = (),
                         inject_buckets: Sequence[int] | None = None, layer_loop: bool = False,
                         kv_windows_count: int = DEFAULT_KV_WINDOWS,
                         rules: ShardingRules | None = None,
                         on_queries: QueryHook | None = None
                         ) -> Callable[..., tuple[DecodeState, SearchCounters]]:
    """Builds the traceable `rollout(model, ids, valid, keys) -> (DecodeState, SearchCounters)`.

    rollout's arguments: model, a merged `Transformer` (e.g. the step's decode copy); ids,
    valid: [N, L] left-padded prompts (L: the prompt bucket); keys: [N] per-row PRNG keys. The
    state has S = L + max_new_tokens + injection_rounds(policy) × W slots (W =
    `injection_width(policy, encode, inject_buckets)`), `rollout_cache_len`'s figure. Call it
    inside `jax.jit`, under `jax.set_mesh(mesh)` for one host callback per batch shard.

    The rest is static: policy (any mode and protocol; ``self`` with protocol "free" decodes
    once, protocol "search_r1" runs Search-R1's turns, `compiled_search_r1.py`); client: the
    `SearchClient` (called from the host callback, from several threads at once); encode: text
    -> ids without special tokens; token_bytes: [V] bytes per token id; stop_strings: extra
    stops that end a row (e.g. ``</answer>``); inject_buckets: the sampler's (None: default);
    layer_loop, kv_windows_count: as `Sampler`'s layer_loop / kv_windows; rules: the sharding
    rules that place the batch (default the model's); on_queries: called on the host after
    each round's decisions with (row ids [n] of the shard's rows in the batch, the rows'
    `QueryRecord`s or None), e.g. a `QueryLog`'s `add`.

    Build and jit it once per run: the client and policy are baked into the program. Without
    a mesh (or when no mesh axis divides the rows) one callback serves every row. A
    `SearchError` of the client (policy ``"fail"``) ends the program as a
    `jax.errors.JaxRuntimeError` whose message holds it (URL and cause).
    """
    if policy.mode != "self" and client is None:
        raise ValueError(f"make_compiled_search: mode={policy.mode!r} needs a SearchClient")
    if max_new_tokens < 1:
        raise ValueError(f"make_compiled_search: max_new_tokens must be >= 1, got {max_new_tokens}")
    token_bytes = list(token_bytes)
    if policy.protocol == "search_r1":
        from ssrl_jax.search.compiled_search_r1 import search_r1_program

        return search_r1_program(
            policy=policy, client=client, encode=encode, token_bytes=token_bytes,
            eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_new_tokens, sampling=sampling,
            stop_strings=stop_strings, inject_buckets=inject_buckets, layer_loop=layer_loop,
            kv_windows_count=kv_windows_count, rules=rules, on_queries=on_queries,
            stop_tables=_stop_tables, per_shard=_per_shard, counters_of=_search_r1_counters)
    byte_lengths = np.fromiter((len(b) for b in token_bytes), np.int64, len(token_bytes))
    searching_first = policy.real_limit > 0
    width = injection_width(policy, encode, inject_buckets)
    room = injection_rounds(policy) * width if searching_first else 0
    extra_stops = tuple(s for s in stop_strings if s != SEARCH_CLOSE)
    search_table, plain_table = _stop_tables(((SEARCH_CLOSE,) + extra_stops, extra_stops),
                                             token_bytes)
    eos = np.asarray(eos_ids, np.int32)

    def host_turn(row_ids, tokens, sources, entropies, finish, matched, searches, real, failed,
                  dropped, entropy, rounds):
        plan = plan_turn(tokens, sources, entropies, finish, matched,
                         RowCounters(searches, real, failed, dropped, entropy),
                         rounds=int(rounds), policy=policy, client=client, encode=encode,
                         token_bytes=token_bytes, byte_lengths=byte_lengths)
        if on_queries is not None:
            on_queries(row_ids, plan.records)
        return turn_outputs(plan, plan.asked, width, pad_id)

    turn_callback = turn_io_callback(host_turn, width, int_counters=4)

    def rollout(model, ids, valid, keys) -> tuple[DecodeState, SearchCounters]:
        batch_rules = rules if rules is not None else (model.rules or ShardingRules())
        n, prompt_len = ids.shape
        cache_len = prompt_len + max_new_tokens + room
        tables = {True: tuple(map(jnp.asarray, search_table)),
                  False: tuple(map(jnp.asarray, plain_table))}

        def decode(state, table, budget, windows):
            return decode_lib.decode(model, state, sampling=sampling, stop_next=table[0],
                                     stop_completed=table[1], eos_ids=jnp.asarray(eos),
                                     max_new_tokens=budget, pad_id=pad_id,
                                     layer_loop=layer_loop, windows=windows)

        state = decode_lib.prefill(model, ids, valid, keys, cache_len)
        state = decode(state, tables[searching_first], jnp.int32(max_new_tokens),
                       kv_windows(prompt_len, cache_len, kv_windows_count))
        zeros = jnp.zeros((n,), jnp.int32)
        counters = RowCounters(zeros, zeros, zeros, zeros, jnp.zeros((n,), jnp.float32))
        one, none = jnp.int32(1), jnp.int32(0)
        if not searching_first:
            return state, _counters(counters, one, none, state.num_steps)

        on_shards = _per_shard(turn_callback, n, batch_rules)
        row_ids = batch_row_ids(n, batch_rules)
        resume_windows = kv_windows(0, cache_len, kv_windows_count)

        def more(carry):
            state, _, steps, _, _, searching = carry
            stopped = search_stopped(state.finish_reason, state.matched_stop)
            return searching & (steps < max_new_tokens) & jnp.any(stopped)

        def round_(carry):
            state, counters, steps, turns, rounds, _ = carry
            out = on_shards(row_ids, state.tokens, state.sources, state.entropies,
                            state.finish_reason, state.matched_stop, *counters, rounds)
            out = [constrain(x, ("batch",) + (None,) * (x.ndim - 1), batch_rules) for x in out]
            inject_ids, inject_valid, policy_len, retract, resume, asked = out[:6]
            counters = RowCounters(*out[6:])
            rounds = rounds + jnp.any(asked).astype(jnp.int32)
            searching = still_searching(state.done, resume, counters.real, policy.real_limit)
            state = jax.lax.cond(
                jnp.any(inject_valid),
                lambda s: decode_lib.inject(model, s, inject_ids, inject_valid, resume,
                                            policy_len, retract),
                lambda s: decode_lib.inject(model, s, inject_ids[:, :0], inject_valid[:, :0],
                                            resume),
                state)
            table = tuple(jnp.where(searching, a, b) for a, b in zip(tables[True], tables[False]))
            state = decode(state, table, max_new_tokens - steps, resume_windows)
            return state, counters, steps + state.num_steps, turns + 1, rounds, searching

        state, counters, steps, turns, rounds, _ = jax.lax.while_loop(
            more, round_, (state, counters, state.num_steps, one, none, jnp.bool_(True)))
        return state, _counters(counters, turns, rounds, steps)

    return rollout


def batch_row_ids(num_rows: int, rules: ShardingRules) -> jax.Array:
    """int32 [N] 0..N-1 placed like the batch: a shard's callback gets its rows' indices."""
    return constrain(jnp.arange(num_rows, dtype=jnp.int32), ("batch",), rules)


class QueryLog:
    """The searches of a compiled rollout's rows, collected on the host from its callbacks
    (`make_compiled_search(on_queries=log.add)`). One host holds the records of the rows it
    serves. Not thread-safe across rollouts: `start` one, run it, `take` its records."""

    def __init__(self):
        self._rows: list[list[QueryRecord]] = []

    def start(self, num_rows: int) -> None:
        self._rows = [[] for _ in range(num_rows)]

    def add(self, row_ids: np.ndarray, records: Sequence[QueryRecord | None]) -> None:
        for row, record in zip(np.asarray(row_ids).tolist(), records):
            if record is not None:
                self._rows[row].append(record)

    def take(self) -> list[list[QueryRecord]]:
        rows, self._rows = self._rows, []
        return rows


def turn_outputs(plan: Any, flag: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """What a round's host callback returns for its plan (a `TurnPlan` or `SearchR1Plan`):
    `pack_injection`'s arrays, resume, `flag` [N] bool, then the plan's counters (integer ones
    as int32, the last, the query entropy, as fp32)."""
    ids, valid, policy_len, retract = pack_injection(plan, width, pad_id)
    *ints, entropy = plan.counters
    return (ids, valid, policy_len, retract, plan.resume, flag,
            *(np.asarray(c, np.int32) for c in ints), np.asarray(entropy, np.float32))


def turn_io_callback(host_turn: Callable, width: int, int_counters: int) -> Callable:
    """`host_turn` (returning `turn_outputs`, with `int_counters` integer counters) as an
    `io_callback` over a shard of n rows: the retriever has side effects, so it runs exactly
    once per round and shard."""
    def callback(*args):
        n = args[0].shape[0]
        row = lambda dtype: jax.ShapeDtypeStruct((n,), dtype)  # noqa: E731
        shapes = (jax.ShapeDtypeStruct((n, width), jnp.int32),
                  jax.ShapeDtypeStruct((n, width), jnp.bool_), row(jnp.int32), row(jnp.bool_),
                  row(jnp.bool_), row(jnp.bool_), *(row(jnp.int32) for _ in range(int_counters)),
                  row(jnp.float32))
        return io_callback(host_turn, shapes, *args, ordered=False)

    return callback


def _counters(rows: RowCounters, turns, rounds, steps) -> SearchCounters:
    return SearchCounters(searches=rows.searches, real=rows.real, failed=rows.failed,
                          dropped=rows.dropped, invalid=jnp.zeros_like(rows.real), turns=turns,
                          rounds=rounds, decode_steps=steps)


def _search_r1_counters(rows: Any, turns, steps) -> SearchCounters:
    """rows: `search_r1_loop.SearchR1Counters`."""
    return SearchCounters(searches=rows.searches, real=rows.real, failed=rows.failed,
                          dropped=jnp.zeros_like(rows.real), invalid=rows.invalid, turns=turns,
                          rounds=jnp.int32(0), decode_steps=steps)


def _stop_tables(stop_sets: Sequence[tuple[str, ...]], token_bytes: Sequence[bytes]
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(next_state, completed) for each stop set, padded to one number of states so that the
    program can switch between them (padded states are unreachable)."""
    tables = [build_stop_table(stops, token_bytes) for stops in stop_sets]
    states = bucket_length(max(t.num_states for t in tables), minimum=16)
    padded = []
    for t in tables:
        extra = ((0, states - t.num_states), (0, 0))
        padded.append((np.pad(np.asarray(t.next_state, np.int32), extra, constant_values=0),
                       np.pad(np.asarray(t.completed, np.int8), extra, constant_values=-1)))
    return padded


def _per_shard(callback: Callable, num_rows: int, rules: ShardingRules) -> Callable:
    """`callback` over row-sharded arguments (the last one, the round count, replicated), once
    per batch shard under the current mesh, or once with every row when there is none."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = scoring_spec(num_rows, mesh, rules)
    if spec is None:
        return callback
    split = {spec} if isinstance(spec, str) else set(spec)
    repeated = [a for a in mesh.axis_names if a not in split and mesh.shape[a] > 1]
    if repeated:
        raise ValueError(
            f"compiled search: {num_rows} rows cannot be split over the mesh axes {repeated} "
            f"(mesh {dict(mesh.shape)}); the retriever would be asked once per device along "
            "them. Use a number of rows that every mesh axis divides.")

    def specs(x):
        return PartitionSpec() if x.ndim == 0 else PartitionSpec(spec, *(None,) * (x.ndim - 1))

    def run(*args):
        out_shapes = jax.eval_shape(callback, *args)
        return jax.shard_map(callback, in_specs=tuple(specs(a) for a in args),
                             out_specs=tuple(specs(o) for o in out_shapes),
                             check_vma=False)(*args)

    return run


def compiled_result(state: DecodeState, counters: SearchCounters, token_bytes: Sequence[bytes],
                    queries: list[list[QueryRecord]] | None = None) -> SearchRollout:
    """The host view of a compiled rollout, as `search_rollout` returns it; queries: a
    `QueryLog`'s records (None: every row's list is empty)."""
    real, failed, dropped, invalid = (
        np.asarray(jax.device_get(x), np.int64)
        for x in (counters.real, counters.failed, counters.dropped, counters.invalid))
    written = written_searches(state, token_bytes)
    n = real.shape[0]
    return SearchRollout(state=state, real_searches=real,
                         self_searches=np.maximum(written - real - failed - dropped, 0),
                         failed_searches=failed, dropped_searches=dropped,
                         invalid_actions=invalid,
                         queries=[[] for _ in range(n)] if queries is None else queries,
                         turns=int(counters.turns), decode_steps=int(counters.decode_steps))
