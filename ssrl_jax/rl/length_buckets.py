"""Length buckets for the update: forward and backward passes over the filled slots only.

A rollout preallocates S = prompt + max_new_tokens slots per row, but rows stop early:
slots after a row's last token are PAD and carry no loss. The update therefore runs each
chunk of rows (a micro-batch, or a chunk of the reference forward) at the narrowest of
a few static widths that holds all of the chunk's tokens (`jax.lax.switch` over one
branch per width, so shapes stay static), and sorts rows by length before they are split
into chunks, so that short rows share chunks and cost little. Both are exact: the slots
cut off are PAD (never attended to, zero loss), and every loss aggregation sums over the
rows of a mini-batch, whatever their order.

Shapes: N rows, S slots, C chunks.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ssrl_jax.sampler.sources import TokenSource


def row_extents(sources: jax.Array) -> jax.Array:
    """sources [N, S] -> [N] int32: one past each row's last non-PAD slot."""
    slots = jnp.arange(1, sources.shape[1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(sources != TokenSource.PAD, slots, 0), axis=1)


def chunk_order(extents: jax.Array, num_chunks: int) -> jax.Array:
    """The row permutation [N] that, followed by `step.split_rows(x, num_chunks)` (chunk c
    takes rows c, c + C, ...), gives chunk c the c-th run of N / C rows by length."""
    by_length = jnp.argsort(extents, stable=True)
    return by_length.reshape(num_chunks, -1).T.reshape(-1)


def run_at_width(fn: Callable, widths: Sequence[int], extent: jax.Array,
                 chunk: dict[str, jax.Array]):
    """fn(chunk cut to the narrowest width >= extent), widths ascending, the last = S.

    chunk: arrays with rows first; those of shape [rows, S] are cut to [rows, width],
    the others pass whole. fn must return the same shapes for every width.
    """
    slots = widths[-1]

    def at(width):
        def branch(chunk):
            return fn({k: v[:, :width] if v.ndim == 2 and v.shape[1] == slots else v
                       for k, v in chunk.items()})
        return branch

    if len(widths) == 1:
        return at(slots)(chunk)
    index = jnp.sum(extent > jnp.asarray(widths[:-1], jnp.int32))  # no loop, unlike searchsorted
    return jax.lax.switch(index, [at(w) for w in widths], chunk)
