"""Per-layer decoding: the model's `extend`, with one weight set and one cache per layer.

Why: inside the decode `while_loop`, the model's layer `scan` makes XLA:CPU copy
every layer's weights out of the stacked arrays and rewrite the whole stacked
cache on every step (the cache goes in as scan inputs and comes out as new scan
outputs). Slicing the weights once per call and carrying one cache per layer lets
each step read weights in place and update its cache slot in place.

Each layer's cache is also laid out for XLA:CPU's batched matmuls: heads before
slots ([B, K, C, Dh]), and cut into chunks at the KV windows' edges. A batched
matmul over a [B, S, K, Dh] layer of the cache first copies it transposed, and one
over a slice of a cache first copies the slice: at every step, for every layer,
about a quarter of the decode time at 32 rows x 288 slots. Attending over whole
chunks (`layers.attention_over_chunks`) reads each chunk in place, and a window's
loop writes only into the chunks it reads.

Each layer still runs the model's own `decoder_layer`, so the numbers are the
model's (up to the order of the attention's fp32 sums). The price is a copy of
the weights and a transposed copy of the cache per call, so this path is for the
CPU backend (small models); accelerators use the model's `extend`.

Shapes: B rows, T new tokens, S cache slots, L layers, K KV heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from ssrl_jax.models import KVCache, Transformer, layers
from ssrl_jax.models.transformer import decoder_layer, extend_inputs


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerChunks:
    """One layer's cache: k[c], v[c]: [B, K, C_c, Dh] hold slots [edges[c], edges[c + 1])."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    edges: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array,
               slots: jax.Array, kv_len: int | None) -> tuple[jax.Array, "LayerChunks"]:
        """Writes one token per row at its slot and attends over the first `kv_len` slots.

        q: [B, 1, H, Dh], k, v: [B, 1, K, Dh], slots: [B, 1] (S: nothing written), mask:
        [B, 1, kv_len]. kv_len (default all slots) must be a chunk edge with every written
        slot below it: the decode loop of that KV window only runs while they are.
        """
        if q.shape[1] != 1:
            raise ValueError(f"LayerChunks.attend takes one new token per row, got {q.shape[1]}")
        last = self.edges.index(self.edges[-1] if kv_len is None else kv_len) - 1
        new_k, new_v = list(self.k), list(self.v)
        for c in range(last + 1):
            start, size = self.edges[c], self.edges[c + 1] - self.edges[c]
            local = slots - start
            local = jnp.where((local >= 0) & (local < size), local, size)   # size: skipped
            new_k[c] = _write_heads_first(new_k[c], k, local)
            new_v[c] = _write_heads_first(new_v[c], v, local)
        out = layers.attention_over_chunks(q, [c.astype(q.dtype) for c in new_k[:last + 1]],
                                           [c.astype(q.dtype) for c in new_v[:last + 1]], mask)
        return out, LayerChunks(k=tuple(new_k), v=tuple(new_v), edges=self.edges)


def _write_heads_first(chunk: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """chunk [B, K, C, Dh] with new [B, T, K, Dh] written at slots [B, T] (C: skipped)."""
    def one_row(row, new_row, at):   # row [K, C, Dh], new_row [T, K, Dh], at [T]
        return row.at[:, at].set(new_row.swapaxes(0, 1).astype(row.dtype), mode="drop")

    return jax.vmap(one_row)(chunk, new, slots)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCaches:
    """The KV cache as L `LayerChunks`; lengths [B] as `KVCache.lengths`."""

    layers: tuple[LayerChunks, ...]
    lengths: jax.Array

    @property
    def max_len(self) -> int:
        return self.layers[0].edges[-1]


def split_cache(cache: KVCache, windows: Sequence[int]) -> LayerCaches:
    """The stacked cache cut into per-layer chunks at `windows` (ascending, the last = S)."""
    edges = (0, *windows)

    def chunks(stacked: jax.Array, layer: int) -> tuple[jax.Array, ...]:
        return tuple(stacked[layer, :, :, start:end].swapaxes(0, 1)
                     for start, end in zip(edges, edges[1:]))

    return LayerCaches(
        layers=tuple(LayerChunks(k=chunks(cache.k, i), v=chunks(cache.v, i), edges=edges)
                     for i in range(cache.k.shape[0])),
        lengths=cache.lengths)


def stack_cache(caches: LayerCaches) -> KVCache:
    def stacked(per_layer: Sequence[tuple[jax.Array, ...]]) -> jax.Array:
        return jnp.stack([jnp.concatenate(chunks, axis=2).swapaxes(0, 1)
                          for chunks in per_layer])

    return KVCache(k=stacked([layer.k for layer in caches.layers]),
                   v=stacked([layer.v for layer in caches.layers]),
                   lengths=caches.lengths)


def layer_params(model: Transformer) -> list[dict[str, jax.Array]]:
    """Each layer's parameters, sliced out of the stacked arrays."""
    stacked = model.layers.stacked()
    return [{name: value[i] for name, value in stacked.items()}
            for i in range(model.config.num_layers)]


def extend(model: Transformer, params: list[dict[str, jax.Array]], input_ids: jax.Array,
           token_valid: jax.Array, caches: LayerCaches,
           kv_len: int | None = None) -> tuple[jax.Array, LayerCaches]:
    """`Transformer.extend` of one token per row over per-layer caches. input_ids,
    token_valid: [B, 1]; kv_len: a chunk edge (see `LayerChunks.attend`)."""
    token_valid = token_valid.astype(bool)
    positions, slots, mask = extend_inputs(token_valid, caches.lengths, caches.max_len, kv_len)
    run_layer = functools.partial(decoder_layer, config=model.config, rules=model.rules,
                                  positions=positions, mask=mask, slots=slots, kv_len=kv_len)
    x = model.embed_tokens(input_ids)
    new_layers = []
    for layer, cache in zip(params, caches.layers):
        x, cache = run_layer(x, (layer, cache))
        new_layers.append(cache)
    new_caches = LayerCaches(layers=tuple(new_layers),
                             lengths=caches.lengths + token_valid.sum(axis=1, dtype=jnp.int32))
    return model.apply_final_norm(x), new_caches
