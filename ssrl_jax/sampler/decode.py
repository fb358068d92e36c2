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


def _write(buffer: jax.Array, values: jax.Array, slot: jax.Array) -> jax.Array:
    """buffer [B, S] with values [B, T] written at slots [slot, slot + T)."""
    return jax.lax.dynamic_update_slice(buffer, values.astype(buffer.dtype), (0, slot))


def _label(valid: jax.Array, source: TokenSource) -> jax.Array:
    return jnp.where(valid, jnp.int8(source), jnp.int8(TokenSource.PAD))


def prefill(model: Transformer, ids: jax.Array, valid: jax.Array, keys: jax.Array,
            cache_len: int) -> DecodeState:
    """Runs left-padded prompts into a fresh cache of `cache_len` slots.

    ids, valid: [B, P] (each row's real tokens right-aligned, at least one);
    keys: [B] PRNG keys. Every row starts not done.
    """
    batch, prompt_len = ids.shape
    config = model.config
    cache = KVCache.create(config, batch, cache_len)
    cache = jax.tree.map(lambda axes, x: constrain(x, axes, model.rules),
                         KVCache.logical_axes(config.kv_quantized), cache,
                         is_leaf=lambda x: isinstance(x, tuple))
    hidden, cache = model.prefill(ids, valid, cache)
    zeros = jnp.zeros((batch, cache_len), jnp.float32)
    rows = jnp.zeros((batch,), jnp.int32)
    state = DecodeState(
        cache=cache,
        tokens=_write(jnp.zeros((batch, cache_len), jnp.int32), ids, 0),
        logprobs=zeros, entropies=zeros,
        sources=_write(jnp.full((batch, cache_len), TokenSource.PAD, jnp.int8),
                       _label(valid, TokenSource.PROMPT), 0),
        last_hidden=hidden[:, prompt_len - 1],
        keys=keys,
        stop_state=rows + ROOT,
        done=jnp.zeros((batch,), bool),
        finish_reason=jnp.full((batch,), FinishReason.NONE, jnp.int8),
        matched_stop=jnp.full((batch,), NO_STOP, jnp.int8),
        num_steps=jnp.zeros((), jnp.int32),
    )
    return _constrain_state(state, model)


def retract_last(state: DecodeState, rows: jax.Array) -> DecodeState:
    """Takes back the last real token of each row in `rows` ([B] bool).

    Its slot becomes PAD (out of the cache's validity mask, so never attended to
    again and not counted in later positions). `last_hidden` still belongs to the
    retracted token: the caller must append at least one token to such a row.
    """
    filled = state.sources != TokenSource.PAD                        # [B, S]
    slots = jnp.arange(filled.shape[1])
    last = jnp.max(jnp.where(filled, slots, -1), axis=1)             # [B]
    drop = rows[:, None] & (slots[None, :] == last[:, None])        # [B, S]
    return dataclasses.replace(
        state,
        cache=dataclasses.replace(state.cache, valid=state.cache.valid & ~drop),
        logprobs=jnp.where(drop, 0.0, state.logprobs),
        entropies=jnp.where(drop, 0.0, state.entropies),
        sources=jnp.where(drop, jnp.int8(TokenSource.PAD), state.sources))


# Injections longer than this run through the model this many tokens at a time, so that an
# injection bucket of W tokens holds attention scores for INJECT_BLOCK queries, not W.
INJECT_BLOCK = 128


def extend_in_blocks(model: Transformer, ids: jax.Array, valid: jax.Array, cache: KVCache,
                     last_hidden: jax.Array, block: int = INJECT_BLOCK
                     ) -> tuple[jax.Array, KVCache]:
    """`model.extend` of right-aligned rows ids / valid [B, T], `block` tokens at a time.

    Returns (final-normed hidden state of slot T - 1 [B, D], meaningful for rows with tokens
    only, as with `extend`; the cache with end advanced by T). Leading blocks where no row has
    a token are skipped (their slots stay invalid, as `extend` would leave them), so a round
    costs what its longest injection needs; T <= `block` is one `extend`. `last_hidden` [B, D]
    (the caller's) is returned when every block is skipped.
    """
    t = ids.shape[1]
    if t <= block or t % block:
        hidden, cache = model.extend(ids, valid, cache)
        return hidden[:, -1], cache
    longest = jnp.max(valid.sum(axis=1, dtype=jnp.int32))
    first = (t - longest) // block
    cache = dataclasses.replace(cache, end=cache.end + first * block)

    def one_block(b, carry):
        _, cache = carry
        window = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=b * block,
                                   slice_size=block, axis=1)
        hidden, cache = model.extend(window(ids), window(valid), cache)
        return hidden[:, -1].astype(last_hidden.dtype), cache

    return jax.lax.fori_loop(first, t // block, one_block, (last_hidden, cache))


def inject(model: Transformer, state: DecodeState, ids: jax.Array, valid: jax.Array,
           resume_rows: jax.Array, policy_len: jax.Array | None = None,
           retract: jax.Array | None = None, end_rows: jax.Array | None = None
           ) -> DecodeState:
    """Appends outside tokens (label INJECTED) and re-opens `resume_rows`.

    ids, valid: [B, T], each row's tokens right-aligned (rows may inject none);
    resume_rows: [B] bool. A resumed row is no longer done, and its stop
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
        labels = _label(valid, TokenSource.INJECTED)
        if policy_len is not None:
            first = ids.shape[1] - valid.sum(axis=1, dtype=jnp.int32)  # right-aligned rows
            rank = jnp.arange(ids.shape[1])[None, :] - first[:, None]
            labels = jnp.where(valid & (rank < policy_len[:, None]), jnp.int8(TokenSource.POLICY),
                               labels)
        last_hidden, cache = extend_in_blocks(model, ids, valid, state.cache, state.last_hidden)
        slot = state.cache.end
        has_tokens = valid.any(axis=1)
        state = dataclasses.replace(
            state,
            cache=cache,
            tokens=_write(state.tokens, ids, slot),
            logprobs=_write(state.logprobs, jnp.zeros(ids.shape), slot),
            entropies=_write(state.entropies, jnp.zeros(ids.shape), slot),
            sources=_write(state.sources, labels, slot),
            last_hidden=jnp.where(has_tokens[:, None], last_hidden, state.last_hidden))
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
    """Samples until every row is done or `max_new_tokens` steps (or the cache) run out.

    stop_next, stop_completed: [Q, V] stop-automaton tables; eos_ids: [E].
    Each step samples one token per running row from the logits of its last
    real token, records it (label POLICY, untempered log-prob, entropy), and
    appends it to the cache; rows that are done write a PAD slot instead. The
    token that ends a row (EOS or a completed stop string) is kept and is in
    the cache, so the row can be resumed after an injection. With
    `layer_loop`, steps run through `layer_loop.extend` (per-layer weights and
    caches, see there) instead of the model's layer scan; the results are the same.
    """
    limit = jnp.minimum(state.cache.end + max_new_tokens, state.cache.max_len)
    windows = tuple(windows or (state.cache.max_len,))
    if windows[-1] != state.cache.max_len or list(windows) != sorted(set(windows)):
        raise ValueError(f"decode: windows {windows} must ascend and end at the cache length "
                         f"{state.cache.max_len}")
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

    def running(s: DecodeState) -> jax.Array:
        return ~jnp.all(s.done) & (s.cache.end < limit)

    def step(s: DecodeState, kv_len: int) -> DecodeState:
        logits = model.logits(s.last_hidden)                       # [B, V] fp32
        positions = s.cache.valid.sum(axis=1, dtype=jnp.int32)     # each row's next position
        active = ~s.done
        token = sample_tokens(logits, row_keys_at(s.keys, positions), sampling)
        token = jnp.where(active, token, pad_id)
        logprob, entropy = logprob_and_entropy(logits, token)
        completed = stop_completed[s.stop_state, token].astype(jnp.int8)
        hit_stop = active & (completed != NO_STOP)
        hit_eos = active & jnp.any(token[:, None] == eos_ids[None, :], axis=1)
        hidden, cache = extend(token[:, None], active[:, None], s.cache, kv_len=kv_len)
        slot = s.cache.end
        finish = jnp.where(hit_eos, jnp.int8(FinishReason.EOS),
                           jnp.where(hit_stop, jnp.int8(FinishReason.STOP_STRING), s.finish_reason))
        return DecodeState(
            cache=cache,
            tokens=_write(s.tokens, token[:, None], slot),
            logprobs=_write(s.logprobs, jnp.where(active, logprob, 0.0)[:, None], slot),
            entropies=_write(s.entropies, jnp.where(active, entropy, 0.0)[:, None], slot),
            sources=_write(s.sources, _label(active, TokenSource.POLICY)[:, None], slot),
            last_hidden=jnp.where(active[:, None], hidden[:, 0], s.last_hidden),
            keys=s.keys,
            stop_state=jnp.where(active, stop_next[s.stop_state, token].astype(jnp.int32),
                                 s.stop_state),
            done=s.done | hit_stop | hit_eos,
            finish_reason=finish,
            matched_stop=jnp.where(hit_stop & ~hit_eos, completed, s.matched_stop),
            num_steps=s.num_steps + 1,
        )

    state = dataclasses.replace(state, num_steps=jnp.zeros((), jnp.int32))
    # The scope names the loop in the compiled program (the memory plan looks for weight
    # collectives inside it).
    with jax.named_scope(DECODE_LOOP_SCOPE):
        for kv_len in windows:
            reads = None if kv_len == state.cache.max_len else kv_len
            state = jax.lax.while_loop(lambda s, w=kv_len: running(s) & (s.cache.end < w),
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

    ids, valid: [B, P] left-padded prompts; keys: [B] per-row PRNG keys; cache_len: S slots.
    """
    state = prefill(model, ids, valid, keys, cache_len)
    return decode(model, state, sampling=sampling, stop_next=stop_next,
                  stop_completed=stop_completed, eos_ids=eos_ids, max_new_tokens=max_new_tokens,
                  pad_id=pad_id, layer_loop=layer_loop, windows=windows)
