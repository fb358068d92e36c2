"""The sampler's decode state: KV cache plus per-slot outputs, one pytree.

Per-slot arrays are aligned with the KV cache slots ([B, S]): slot j of row b
holds the token whose keys/values sit in cache slot j. A row's tokens fill its
first `cache.lengths[b]` slots in order and the free slots after them are labelled
`TokenSource.PAD`, so `sources != PAD` is exactly the cache's validity mask and
the arrays can go straight into a masked forward pass (right padding; positions
follow the mask). `row_outputs` gives each row's tokens on the host.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ssrl_jax.models import KVCache
from ssrl_jax.sampler.sources import FinishReason, TokenSource


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    """Everything needed to resume decoding. B rows, S cache slots, D hidden.

    tokens [B, S] int32; logprobs [B, S] fp32 (untempered log-prob of POLICY
    tokens, 0 elsewhere); entropies [B, S] fp32 (entropy of the untempered
    next-token distribution a POLICY token was drawn from, 0 elsewhere);
    sources [B, S] int8 (`TokenSource`); last_hidden [B, D]: final hidden
    state of each row's last real token; keys [B]: per-row PRNG keys;
    stop_state [B] int32: stop-automaton state over the text generated since
    the row last (re)started; done [B] bool; finish_reason [B] int8
    (`FinishReason`); matched_stop [B] int8: index of the stop string that
    stopped the row, or -1; num_steps [] int32: decode iterations of the last
    call; decode_start [B] int32: each row's length when the last decode call began
    (its tokens from there on are that call's).
    """

    cache: KVCache
    tokens: jax.Array
    logprobs: jax.Array
    entropies: jax.Array
    sources: jax.Array
    last_hidden: jax.Array
    keys: jax.Array
    stop_state: jax.Array
    done: jax.Array
    finish_reason: jax.Array
    matched_stop: jax.Array
    num_steps: jax.Array
    decode_start: jax.Array

    @staticmethod
    def logical_axes(quantized_cache: bool = False) -> "DecodeState":
        row = ("batch",)
        slots = ("batch", None)
        return DecodeState(cache=KVCache.logical_axes(quantized_cache), tokens=slots, logprobs=slots,
                           entropies=slots, sources=slots, last_hidden=("batch", None), keys=row,
                           stop_state=row, done=row, finish_reason=row, matched_stop=row,
                           num_steps=(), decode_start=row)


@dataclasses.dataclass
class RowOutput:
    """One row's trajectory with padding removed (N real tokens), on the host."""

    tokens: np.ndarray       # [N] int32
    sources: np.ndarray      # [N] int8, TokenSource
    logprobs: np.ndarray     # [N] fp32
    entropies: np.ndarray    # [N] fp32
    finish_reason: FinishReason
    matched_stop: int        # index into the stop strings, or -1

    def tokens_from(self, *sources: TokenSource) -> np.ndarray:
        return self.tokens[np.isin(self.sources, [int(s) for s in sources])]

    @property
    def completion(self) -> np.ndarray:
        """Tokens after the prompt (policy-written and injected)."""
        return self.tokens[self.sources != TokenSource.PROMPT]


def row_outputs(state: DecodeState) -> list[RowOutput]:
    """The compact per-row trajectories of a decode state (copies to the host)."""
    tokens, sources, logprobs, entropies, finish, matched = jax.device_get(
        (state.tokens, state.sources, state.logprobs, state.entropies,
         state.finish_reason, state.matched_stop))
    rows = []
    for b in range(tokens.shape[0]):
        real = sources[b] != TokenSource.PAD
        rows.append(RowOutput(tokens=tokens[b, real], sources=sources[b, real],
                              logprobs=logprobs[b, real], entropies=entropies[b, real],
                              finish_reason=FinishReason(int(finish[b])),
                              matched_stop=int(matched[b])))
    return rows
