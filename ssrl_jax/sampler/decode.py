"""Traceable prefill, injection and decode loop over a `DecodeState`.

These functions take a merged NNX `Transformer` and run inside `jax.jit` (see
`sampler.py`). Shapes: B rows, P prompt slots, T injected slots, S cache slots,
V vocabulary, Q stop-automaton states, E end-of-sequence ids.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from ssrl_jax.models import KVCache, Transformer
from ssrl_jax.models.transformer import write_rows
from ssrl_jax.sampler import layer_loop as layer_loop_lib
from ssrl_jax.sampler.sampling import (SamplingConfig, logprob_and_entropy, row_keys_at,
                                       sample_tokens)
from ssrl_jax.sampler.sources import FinishReason, TokenSource
from ssrl_jax.sampler.state import DecodeState
from ssrl_jax.sampler.stop import NO_STOP, ROOT
from ssrl_jax.sharding import constrain


def _constrain_state(state: DecodeState, model: Transformer) -> DecodeState:
    return jax.tree.map(lambda axes, x: constrain(x, axes, model.rules),
                        DecodeState.logical_axes(model.config.kv_quantized), state,
                        is_leaf=lambda x: isinstance(x, tuple))


def _label(valid: jax.Array, source: TokenSource) -> jax.Array:
    return jnp.where(valid, jnp.int8(source), jnp.int8(TokenSource.PAD))


def left_align(ids: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ids, valid [B, T] with each row's real tokens moved to the front, in order."""
    order = jnp.argsort(~valid.astype(bool), axis=1, stable=True)
    return (jnp.take_along_axis(ids, order, axis=1),
            jnp.take_along_axis(valid.astype(bool), order, axis=1))


def last_real(hidden: jax.Array, valid: jax.Array) -> jax.Array:
    """hidden [B, T, D] at each row's last real token of valid [B, T] (real tokens first);
    rows with none get index 0."""
    last = jnp.maximum(valid.sum(axis=1, dtype=jnp.int32) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


def _slots(cache: KVCache, valid: jax.Array) -> jax.Array:
    """Where tokens valid [B, T] (real tokens first) appended to `cache` go: [B, T], S for
    padding (out of range: not written)."""
    at = cache.lengths[:, None] + jnp.arange(valid.shape[1], dtype=jnp.int32)[None, :]
    return jnp.where(valid, at, cache.max_len)


def prefill(model: Transformer, ids: jax.Array, valid: jax.Array, keys: jax.Array,
            cache_len: int) -> DecodeState:
    """Runs the prompts into a fresh cache of `cache_len` slots.

    ids, valid: [B, P] (padded on either side; at least one real token per row), moved
    to the front of their rows (`left_align`); keys: [B] PRNG keys. Every row starts not done.
    """
    ids, valid = left_align(ids, valid)
    batch, _ = ids.shape
    config = model.config
    cache = KVCache.create(config, batch, cache_len)
    cache = jax.tree.map(lambda axes, x: constrain(x, axes, model.rules),
                         KVCache.logical_axes(config.kv_quantized), cache,
                         is_leaf=lambda x: isinstance(x, tuple))
    slots = _slots(cache, valid)
    hidden, cache = model.prefill(ids, valid, cache)
    zeros = jnp.zeros((batch, cache_len), jnp.float32)
    rows = jnp.zeros((batch,), jnp.int32)
    state = DecodeState(
        cache=cache,
        tokens=write_rows(jnp.zeros((batch, cache_len), jnp.int32), ids, slots),
        logprobs=zeros, entropies=zeros,
        sources=write_rows(jnp.full((batch, cache_len), TokenSource.PAD, jnp.int8),
                           _label(valid, TokenSource.PROMPT), slots),
        last_hidden=last_real(hidden, valid),
        keys=keys,
        stop_state=rows + ROOT,
        done=jnp.zeros((batch,), bool),
        finish_reason=jnp.full((batch,), FinishReason.NONE, jnp.int8),
        matched_stop=jnp.full((batch,), NO_STOP, jnp.int8),
        num_steps=jnp.zeros((), jnp.int32),
        decode_start=cache.lengths,
    )
    return _constrain_state(state, model)


def retract_last(state: DecodeState, rows: jax.Array) -> DecodeState:
    """Takes back the last token of each row in `rows` ([B] bool).

    Its slot becomes free (PAD) and the row's length shrinks by one. `last_hidden` still
    belongs to the retracted token: the caller must append at least one token to such a row.
    """
    lengths = state.cache.lengths
    slot = jnp.where(rows, lengths - 1, state.cache.max_len)[:, None]      # [B, 1]
    drop = lambda buffer, value: write_rows(buffer, jnp.full(slot.shape, value, buffer.dtype),  # noqa: E731
                                            slot)
    return dataclasses.replace(
        state,
        cache=dataclasses.replace(state.cache, lengths=lengths - rows.astype(jnp.int32)),
        tokens=drop(state.tokens, 0),
        logprobs=drop(state.logprobs, 0.0),
        entropies=drop(state.entropies, 0.0),
        sources=drop(state.sources, TokenSource.PAD))


# Injections longer than this run through the model this many tokens at a time, so that an
# injection bucket of W tokens holds attention scores for INJECT_BLOCK queries, not W.
INJECT_BLOCK = 128


def extend_in_blocks(model: Transformer, ids: jax.Array, valid: jax.Array, cache: KVCache,
                     last_hidden: jax.Array, block: int = INJECT_BLOCK
                     ) -> tuple[jax.Array, KVCache]:
    """`model.extend` of rows ids / valid [B, T] (real tokens first), `block` tokens at a time.

    Returns (the final-normed hidden state of each row's last new token [B, D], `last_hidden`
    [B, D] (the caller's) for rows with none; the updated cache). Trailing blocks where no
    row has a token are skipped, so a round costs what its longest injection needs;
    T <= `block` is one `extend`.
    """
    has_tokens = valid.any(axis=1)
    t = ids.shape[1]
    if t <= block or t % block:
        hidden, cache = model.extend(ids, valid, cache)
        return jnp.where(has_tokens[:, None], last_real(hidden, valid), last_hidden), cache
    longest = jnp.max(valid.sum(axis=1, dtype=jnp.int32))

    def one_block(b, carry):
        last_hidden, cache = carry
        window = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=b * block,
                                   slice_size=block, axis=1)
        block_valid = window(valid)
        hidden, cache = model.extend(window(ids), block_valid, cache)
        last = last_real(hidden, block_valid).astype(last_hidden.dtype)
        return jnp.where(block_valid.any(axis=1)[:, None], last, last_hidden), cache

    return jax.lax.fori_loop(0, -(-longest // block), one_block, (last_hidden, cache))


def inject(model: Transformer, state: DecodeState, ids: jax.Array, valid: jax.Array,
           resume_rows: jax.Array, policy_len: jax.Array | None = None,
           retract: jax.Array | None = None, end_rows: jax.Array | None = None
           ) -> DecodeState:
    """Appends outside tokens (label INJECTED) and re-opens `resume_rows`.

    ids, valid: [B, T], each row's tokens in order, padded on either side (rows may inject
    none); resume_rows: [B] bool. A resumed row is no longer done, and its stop
    automaton restarts so that only text generated after this point counts.
    Other rows keep their done flag (a row still running stays running).
    retract: [B] bool, rows whose last token is taken back first (`retract_last`);
    policy_len: [B] int, how many of a row's first appended tokens are labelled
    POLICY rather than INJECTED (text the policy wrote, re-tokenised: a turn cut
    right after its closing tag), with log-prob and entropy 0. end_rows: [B]
    bool, rows still running that stop here (a turn ended by a per-turn budget).
    """
    if retract is not None:
        state = retract_last(state, retract)
    if ids.shape[1] > 0:
        ids, valid = left_align(ids, valid)
        labels = _label(valid, TokenSource.INJECTED)
        if policy_len is not None:
            rank = jnp.arange(ids.shape[1])[None, :]
            labels = jnp.where(valid & (rank < policy_len[:, None]), jnp.int8(TokenSource.POLICY),
                               labels)
        slots = _slots(state.cache, valid)
        last_hidden, cache = extend_in_blocks(model, ids, valid, state.cache, state.last_hidden)
        state = dataclasses.replace(
            state,
            cache=cache,
            tokens=write_rows(state.tokens, ids, slots),
            logprobs=write_rows(state.logprobs, jnp.zeros(ids.shape), slots),
            entropies=write_rows(state.entropies, jnp.zeros(ids.shape), slots),
            sources=write_rows(state.sources, labels, slots),
            last_hidden=last_hidden)
    return dataclasses.replace(
        state,
        stop_state=jnp.where(resume_rows, ROOT, state.stop_state),
        done=(state.done if end_rows is None else state.done | end_rows) & ~resume_rows,
        finish_reason=jnp.where(resume_rows, jnp.int8(FinishReason.NONE), state.finish_reason),
        matched_stop=jnp.where(resume_rows, jnp.int8(NO_STOP), state.matched_stop))


DECODE_LOOP_SCOPE = "decode_loop"


def decode(model: Transformer, state: DecodeState, *, sampling: SamplingConfig,
           stop_next: jax.Array, stop_completed: jax.Array, eos_ids: jax.Array,
           max_new_tokens: jax.Array, pad_id: int, layer_loop: bool = False,
           windows: Sequence[int] | None = None) -> DecodeState:
    """Samples until every row is done or has `max_new_tokens` new tokens (or a full cache).

    stop_next, stop_completed: [Q, V] stop-automaton tables; eos_ids: [E]; max_new_tokens:
    [] or [B], each row's budget for this call. Each step samples one token per running row
    from the logits of its last token, records it (label POLICY, untempered log-prob,
    entropy), and appends it to the row's cache; rows that are done or out of budget write
    nothing. The token that ends a row (EOS or a completed stop string) is kept and is in
    the cache, so the row can be resumed after an injection. With `layer_loop`, steps run
    through `layer_loop.extend` (per-layer weights and caches, see there) instead of the
    model's layer scan; the results are the same.
    """
    max_len = state.cache.max_len
    budget_end = jnp.minimum(state.cache.lengths + max_new_tokens, max_len)     # [B]
    windows = tuple(windows or (max_len,))
    if windows[-1] != max_len or list(windows) != sorted(set(windows)):
        raise ValueError(f"decode: windows {windows} must ascend and end at the cache length "
                         f"{max_len}")
    if layer_loop:
        if model.config.kv_quantized:
            raise ValueError("decode: the CPU layer loop keeps an unquantized cache; "
                             "kv_cache_dtype='int8' decodes through the model's layer scan")
        params = layer_loop_lib.layer_params(model)
        extend = functools.partial(layer_loop_lib.extend, model, params)
        state = dataclasses.replace(state,
                                    cache=layer_loop_lib.split_cache(state.cache, windows))
    else:
        extend = model.extend

    def active(s: DecodeState) -> jax.Array:
        return ~s.done & (s.cache.lengths < budget_end)

    def fits(s: DecodeState, window: int) -> jax.Array:
        """Whether every running row's next token lands below slot `window`."""
        act = active(s)
        return jnp.any(act) & (jnp.max(jnp.where(act, s.cache.lengths, 0)) < window)

    def step(s: DecodeState, kv_len: int) -> DecodeState:
        logits = model.logits(s.last_hidden)                       # [B, V] fp32
        positions = s.cache.lengths                                # each row's next position
        act = active(s)
        token = sample_tokens(logits, row_keys_at(s.keys, positions), sampling)
        token = jnp.where(act, token, pad_id)
        logprob, entropy = logprob_and_entropy(logits, token)
        completed = stop_completed[s.stop_state, token].astype(jnp.int8)
        hit_stop = act & (completed != NO_STOP)
        hit_eos = act & jnp.any(token[:, None] == eos_ids[None, :], axis=1)
        slot = jnp.where(act, positions, max_len)[:, None]        # [B, 1]
        hidden, cache = extend(token[:, None], act[:, None], s.cache, kv_len=kv_len)
        finish = jnp.where(hit_eos, jnp.int8(FinishReason.EOS),
                           jnp.where(hit_stop, jnp.int8(FinishReason.STOP_STRING), s.finish_reason))
        return dataclasses.replace(
            s,
            cache=cache,
            tokens=write_rows(s.tokens, token[:, None], slot),
            logprobs=write_rows(s.logprobs, logprob[:, None], slot),
            entropies=write_rows(s.entropies, entropy[:, None], slot),
            sources=write_rows(s.sources, _label(act, TokenSource.POLICY)[:, None], slot),
            last_hidden=jnp.where(act[:, None], hidden[:, 0], s.last_hidden),
            stop_state=jnp.where(act, stop_next[s.stop_state, token].astype(jnp.int32),
                                 s.stop_state),
            done=s.done | hit_stop | hit_eos,
            finish_reason=finish,
            matched_stop=jnp.where(hit_stop & ~hit_eos, completed, s.matched_stop),
            num_steps=s.num_steps + 1,
        )

    state = dataclasses.replace(state, num_steps=jnp.zeros((), jnp.int32),
                                decode_start=state.cache.lengths)
    # The scope names the loop in the compiled program (the memory plan looks for weight
    # collectives inside it).
    with jax.named_scope(DECODE_LOOP_SCOPE):
        for kv_len in windows:
            reads = None if kv_len == max_len else kv_len
            state = jax.lax.while_loop(lambda s, w=kv_len: fits(s, w),
                                       functools.partial(step, kv_len=reads), state)
    if layer_loop:
        state = dataclasses.replace(state, cache=layer_loop_lib.stack_cache(state.cache))
    return state


def generate(model: Transformer, ids: jax.Array, valid: jax.Array, keys: jax.Array, *,
             cache_len: int, sampling: SamplingConfig, stop_next: jax.Array,
             stop_completed: jax.Array, eos_ids: jax.Array, max_new_tokens: jax.Array,
             pad_id: int, layer_loop: bool = False,
             windows: Sequence[int] | None = None) -> DecodeState:
    """`prefill` then `decode`: the program the sampler and the train step's rollout share.

    ids, valid: [B, P] padded prompts (`prefill`); keys: [B] per-row PRNG keys; cache_len: S.
    """
    state = prefill(model, ids, valid, keys, cache_len)
    return decode(model, state, sampling=sampling, stop_next=stop_next,
                  stop_completed=stop_completed, eos_ids=eos_ids, max_new_tokens=max_new_tokens,
                  pad_id=pad_id, layer_loop=layer_loop, windows=windows)
