"""Per-layer decoding: the model's `extend`, with one weight set and one cache per layer.

Why: inside the decode `while_loop`, the model's layer `scan` makes XLA:CPU copy
every layer's weights out of the stacked arrays and rewrite the whole stacked
cache on every step (the cache goes in as scan inputs and comes out as new scan
outputs). Slicing the weights once per call and carrying one cache per layer lets
each step read weights in place and update its cache slot in place.

Each layer's cache is also laid out for XLA:CPU's batched matmuls: heads before
slots ([B, K, C, Dh]), and cut into chunks at the KV windows' edges. A batched
matmul over the model's [B, S, K, Dh] cache first copies it transposed, and one
over a slice of a cache first copies the slice: at every step, for every layer,
about a quarter of the decode time at 32 rows x 288 slots. Attending over whole
chunks (`layers.attention_over_chunks`) reads each chunk in place, and a window's
loop writes only into its last chunk.

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
               cache_end: jax.Array, kv_len: int | None) -> tuple[jax.Array, "LayerChunks"]:
        """Writes one token per row at slot `cache_end` and attends over the first `kv_len`.

        q: [B, 1, H, Dh], k, v: [B, 1, K, Dh], mask: [B, 1, kv_len]. kv_len (default all
        slots) must be a chunk edge, and `cache_end` lie in the chunk that ends there: the
        decode loop of that KV window only runs while it does.
        """
        if q.shape[1] != 1:
            raise ValueError(f"LayerChunks.attend takes one new token per row, got {q.shape[1]}")
        last = self.edges.index(self.edges[-1] if kv_len is None else kv_len) - 1
        offset = (0, 0, cache_end - self.edges[last], 0)
        written = [jax.lax.dynamic_update_slice(chunk, new.swapaxes(1, 2).astype(chunk.dtype),
                                                offset)
                   for chunk, new in ((self.k[last], k), (self.v[last], v))]
        new_k = self.k[:last] + (written[0],) + self.k[last + 1:]
        new_v = self.v[:last] + (written[1],) + self.v[last + 1:]
        out = layers.attention_over_chunks(q, [c.astype(q.dtype) for c in new_k[:last + 1]],
                                           [c.astype(q.dtype) for c in new_v[:last + 1]], mask)
        return out, LayerChunks(k=new_k, v=new_v, edges=self.edges)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCaches:
    """The KV cache as L `LayerChunks`; valid [B, S]; end []."""

    layers: tuple[LayerChunks, ...]
    valid: jax.Array
    end: jax.Array

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


def split_cache(cache: KVCache, windows: Sequence[int]) -> LayerCaches:
    """The stacked cache cut into per-layer chunks at `windows` (ascending, the last = S)."""
    edges = (0, *windows)

    def chunks(stacked: jax.Array, layer: int) -> tuple[jax.Array, ...]:
        return tuple(stacked[layer, :, start:end].swapaxes(1, 2)
                     for start, end in zip(edges, edges[1:]))

    return LayerCaches(
        layers=tuple(LayerChunks(k=chunks(cache.k, i), v=chunks(cache.v, i), edges=edges)
                     for i in range(cache.k.shape[0])),
        valid=cache.valid, end=cache.end)


def stack_cache(caches: LayerCaches) -> KVCache:
    def stacked(per_layer: Sequence[tuple[jax.Array, ...]]) -> jax.Array:
        return jnp.stack([jnp.concatenate(chunks, axis=2).swapaxes(1, 2)
                          for chunks in per_layer])

    return KVCache(k=stacked([layer.k for layer in caches.layers]),
                   v=stacked([layer.v for layer in caches.layers]),
                   valid=caches.valid, end=caches.end)


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
    positions, valid, mask = extend_inputs(token_valid, caches.valid, caches.end, kv_len)
    run_layer = functools.partial(decoder_layer, config=model.config, rules=model.rules,
                                  positions=positions, mask=mask, cache_end=caches.end,
                                  kv_len=kv_len)
    x = model.embed_tokens(input_ids)
    new_layers = []
    for layer, cache in zip(params, caches.layers):
        x, cache = run_layer(x, (layer, cache))
        new_layers.append(cache)
    new_caches = LayerCaches(layers=tuple(new_layers), valid=valid,
                             end=caches.end + input_ids.shape[1])
    return model.apply_final_norm(x), new_caches
