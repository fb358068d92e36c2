"""One Flax NNX decoder for Llama 3.x, Qwen2/2.5 and Qwen3.

Layer parameters are stacked on a leading `layers` axis and run with one
`lax.scan`, so compile time does not grow with depth. Every parameter carries
its logical axis names in the `logical_axes` metadata; `ssrl_jax.sharding`
maps them to mesh axes. (We keep our own metadata key rather than NNX's
`out_sharding` so that rules can drop mesh axes that do not divide a dimension
and so that creation never shards eagerly outside our jitted initialiser.)

Shapes: B batch, T new tokens, S cache slots, L layers, D hidden, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ssrl_jax.models import layers, paged, splash
from ssrl_jax.models.config import ModelConfig
from ssrl_jax.sharding import ShardingRules, constrain

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def layer_param_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Per-layer parameter name -> (shape, logical axes), without the layers axis."""
    d, f = config.hidden_size, config.intermediate_size
    h, k, dh = config.num_heads, config.num_kv_heads, config.head_dim
    shapes = {
        "attn_norm": ((d,), ("norm",)),
        "wq": ((d, h, dh), ("embed", "q_heads", "head_dim")),
        "wk": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
        "wv": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
        "wo": ((h, dh, d), ("q_heads", "head_dim", "embed")),
        "mlp_norm": ((d,), ("norm",)),
        "w_gate": ((d, f), ("embed", "mlp")),
        "w_up": ((d, f), ("embed", "mlp")),
        "w_down": ((f, d), ("mlp", "embed")),
    }
    if config.attention_bias:
        shapes.update(bq=((h, dh), ("q_heads", "head_dim")),
                      bk=((k, dh), ("kv_heads", "head_dim")),
                      bv=((k, dh), ("kv_heads", "head_dim")))
    if config.qk_norm:
        shapes.update(q_norm=((dh,), ("norm",)), k_norm=((dh,), ("norm",)))
    return shapes


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantizedKV:
    """int8 keys or values with their scales (`layers.quantize_kv`): x ~= values * scale.

    values: [L, K, B, S, Dh] int8; scale: [L, K, B, S] fp32, one per slot and KV head.
    """

    values: jax.Array
    scale: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values of every layer, in the stacked-layer layout, filled per row.

    k, v: [L, K, B, S, Dh] in the compute dtype, or `QuantizedKV` (config.kv_cache_dtype
    "int8"); lengths: [B] int32: row b's tokens fill slots [0, lengths[b]) in order, one
    real token per slot (padding is never written), and later slots are free. Rows grow
    independently: a row that stops stops growing, and a step reads only what its rows hold.
    KV heads come first: a layer's [K, B, S, Dh] is every row's slots back to back per head,
    the pages the paged decode kernel reads (`models/paged.py`) with no copy.
    """

    k: jax.Array | QuantizedKV
    v: jax.Array | QuantizedKV
    lengths: jax.Array

    @classmethod
    def create(cls, config: ModelConfig, batch: int, max_len: int) -> "KVCache":
        shape = (config.num_layers, config.num_kv_heads, batch, max_len, config.head_dim)

        def empty():
            if config.kv_quantized:
                return QuantizedKV(values=jnp.zeros(shape, jnp.int8),
                                   scale=jnp.zeros(shape[:-1], jnp.float32))
            return jnp.zeros(shape, config.dtype)

        return cls(k=empty(), v=empty(), lengths=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        k = self.k.values if isinstance(self.k, QuantizedKV) else self.k
        return k.shape[3]

    @property
    def valid(self) -> jax.Array:
        """[B, S] bool: the slots holding a token."""
        return jnp.arange(self.max_len)[None, :] < self.lengths[:, None]

    @staticmethod
    def logical_axes(quantized: bool = False) -> "KVCache":
        kv = ("layers", "act_kv_heads", "batch", None, None)
        if quantized:
            kv = QuantizedKV(values=kv, scale=kv[:-1])
        return KVCache(k=kv, v=kv, lengths=("batch",))


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, stacked on a leading layers axis."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        normal = nnx.initializers.normal(config.initializer_range)
        for name, (shape, axes) in layer_param_shapes(config).items():
            full = (config.num_layers, *shape)
            if name.endswith("norm"):
                value = jnp.ones(full, dtype)
            elif name.startswith("b"):
                value = jnp.zeros(full, dtype)
            else:
                value = normal(rngs.params(), full, dtype)
            setattr(self, name, nnx.Param(value, logical_axes=("layers", *axes)))

    def stacked(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in self._param_names()}

    def _param_names(self):
        return [n for n, v in vars(self).items() if isinstance(v, nnx.Param)]


class Transformer(nnx.Module):
    """Decoder-only transformer: `model(ids, attention_mask=m) -> logits [B, T, V]` (fp32)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs,
                 rules: ShardingRules | None = ShardingRules()):
        self.config = config
        self.rules = rules
        dtype = jnp.dtype(config.param_dtype)
        normal = nnx.initializers.normal(config.initializer_range)
        v, d = config.vocab_size, config.hidden_size
        self.embed = nnx.Param(normal(rngs.params(), (v, d), dtype), logical_axes=("vocab", "embed"))
        self.layers = DecoderLayers(config, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((d,), dtype), logical_axes=("norm",))
        self.lm_head = (None if config.tie_word_embeddings else
                        nnx.Param(normal(rngs.params(), (d, v), dtype), logical_axes=("embed", "vocab")))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        """input_ids, attention_mask, segment_ids: [B, T] -> logits [B, T, V] in fp32."""
        return self.logits(self.hidden_states(input_ids, attention_mask,
                                              segment_ids=segment_ids))

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                      positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, D].

        segment_ids [B, T] (packed rows: one id per example, runs of equal ids) keep each
        token's attention inside its own example and restart positions at 0 with each
        example. Positions otherwise default to those of the mask.
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        attention_mask = attention_mask.astype(bool)
        if positions is None:
            positions = (layers.positions_from_mask(attention_mask) if segment_ids is None
                         else layers.positions_from_segments(segment_ids))
        if self.config.attention == "splash":
            mask = splash.Segments(splash.segment_ids_of(attention_mask, segment_ids))
        else:
            t = input_ids.shape[1]
            mask = jnp.tril(jnp.ones((t, t), bool))[None] & attention_mask[:, None, :]
            if segment_ids is not None:
                mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        x, _ = self.run_layers(self.embed_tokens(input_ids), positions, mask, cache=None)
        return self.apply_final_norm(x)

    def prefill(self, input_ids: jax.Array, token_valid: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
        """`extend` into an empty cache (every length 0): the tokens attend only to each
        other, so with splash attention they run through the kernel over their own T slots
        instead of a [T, S] mask over the whole cache."""
        if self.config.attention != "splash":
            return self.extend(input_ids, token_valid, cache)
        token_valid = token_valid.astype(bool)
        positions, slots, _ = extend_inputs(token_valid, cache.lengths, cache.max_len, kv_len=0)
        mask = splash.Segments(splash.segment_ids_of(token_valid), new_tokens_only=True)
        x, (k, v) = self.run_layers(self.embed_tokens(input_ids), positions, mask, cache=cache,
                                     slots=slots)
        lengths = cache.lengths + token_valid.sum(axis=1, dtype=jnp.int32)
        return self.apply_final_norm(x), KVCache(k=k, v=v, lengths=lengths)

    def extend(self, input_ids: jax.Array, token_valid: jax.Array, cache: KVCache,
               kv_len: int | None = None) -> tuple[jax.Array, KVCache]:
        """Appends each row's real tokens after its own last one and runs them.

        input_ids, token_valid: [B, T], each row's real tokens first (a row may append
        none); padding is neither written nor attended to. kv_len (static): attention reads
        only the cache's first kv_len slots (the caller guarantees that every row's new
        tokens land below it); default all of them. Returns final-normed hidden states
        [B, T, D] (row b's last real token at index `token_valid[b].sum() - 1`) and the
        updated cache.
        """
        token_valid = token_valid.astype(bool)
        positions, slots, mask = extend_inputs(token_valid, cache.lengths, cache.max_len, kv_len)
        x, (k, v) = self.run_layers(self.embed_tokens(input_ids), positions, mask, cache=cache,
                                     slots=slots, kv_len=kv_len)
        lengths = cache.lengths + token_valid.sum(axis=1, dtype=jnp.int32)
        return self.apply_final_norm(x), KVCache(k=k, v=v, lengths=lengths)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> logits [..., V] in fp32."""
        dtype = jnp.dtype(self.config.dtype)
        head = self.embed[...].T if self.lm_head is None else self.lm_head[...]
        out = jnp.dot(hidden.astype(dtype), head.astype(dtype), preferred_element_type=jnp.float32)
        if out.ndim == 3:
            out = constrain(out, ("batch", None, "act_vocab"), self.rules)
        return out

    def output_embedding(self) -> jax.Array:
        """The [D, V] output projection (the transposed input embedding when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    # -- the per-layer pieces (the sampler's CPU layer loop runs them one layer at a time) --

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """[B, T] ids -> [B, T, D] embeddings in the compute dtype."""
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.config.dtype)
        return constrain(x, ("batch", None, None), self.rules)

    def apply_final_norm(self, x: jax.Array) -> jax.Array:
        """The norm after the last layer. x: [B, T, D]."""
        return layers.rms_norm(x, self.final_norm[...], self.config.rms_norm_eps)

    def run_layers(self, x, positions, mask, cache: KVCache | None,
                   slots: jax.Array | None = None, kv_len: int | None = None):
        """Every `decoder_layer` in a scan over the stacked weights (and cache). x: [B, T, D];
        slots [B, T]: the cache slot of each new token (`extend_inputs`). Returns (x, (k, v))
        with the updated stacked cache, or (x, None) without one."""
        if cache is not None and slots is None:
            raise ValueError("run_layers: a cache needs the slots its new tokens go to")
        config = self.config
        layer = functools.partial(decoder_layer, config=config, rules=self.rules,
                                  positions=positions, mask=mask, slots=slots, kv_len=kv_len)
        if config.remat != "none":
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[config.remat],
                                   prevent_cse=False)
        stacked = self.layers.stacked()
        if cache is None:
            return jax.lax.scan(layer, x, (stacked, None))

        # The stacked cache rides in the scan carry and each layer writes only its new
        # slots into it: an update in place, where taking the cache as scan input and
        # returning it as output would materialise a second stacked cache.
        def body(carry, xs):
            x, k_all, v_all = carry
            params, index = xs
            x, (k_all, v_all) = layer(x, (params, (k_all, v_all, index)))
            return (x, k_all, v_all), None

        (x, k, v), _ = jax.lax.scan(body, (x, cache.k, cache.v),
                                    (stacked, jnp.arange(config.num_layers)))
        return x, (k, v)


def extend_inputs(token_valid: jax.Array, lengths: jax.Array, max_len: int,
                  kv_len: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Positions, cache slots and attention mask of T tokens appended to each row.

    token_valid: [B, T], each row's real tokens first; lengths: [B], the slots each row
    already fills; max_len: S. -> positions [B, T] (a row's token at position p sits in slot
    p), slots [B, T] (where each token is written: S, out of range, for padding), mask
    [B, T, kv_len] (each token sees its row's slots up to its own; kv_len defaults to S).
    """
    positions = lengths[:, None] + jnp.arange(token_valid.shape[1], dtype=jnp.int32)[None, :]
    slots = jnp.where(token_valid, positions, max_len)
    kv_len = max_len if kv_len is None else kv_len
    mask = jnp.arange(kv_len)[None, None, :] <= positions[:, :, None]
    return positions, slots, mask


def write_rows(buffer: jax.Array, values: jax.Array, slots: jax.Array) -> jax.Array:
    """buffer [B, S, ...] with values [B, T, ...] written at slots [B, T] of their rows.

    Slots outside [0, S) are skipped (padding). A scatter batched over rows, so that
    the rows' sharding carries through it and each row's update happens in place.
    """
    def one_row(row, new, at):
        return row.at[at].set(new.astype(row.dtype), mode="drop")

    return jax.vmap(one_row)(buffer, values, slots)


def decoder_layer(x, layer, *, config: ModelConfig, rules, positions, mask, slots,
                  kv_len: int | None = None):
    """One pre-norm decoder block. x: [B, T, D].

    layer = (params, kv) with kv one of: None (no cache); (k_all, v_all, index) the stacked
    caches [L, K, B, S, Dh] and this layer's index; or a layer cache of another layout
    with a method `attend(q, k, v, *, mask, slots, kv_len) -> (out, new cache)` (the
    CPU decode loop's, `sampler/layer_loop.py`). The new keys/values are written at `slots`
    [B, T] (`extend_inputs`); the updated cache comes back as (k_all, v_all) or the new
    layer cache.
    Attention reads the cache's first `kv_len` slots (static; default all).
    """
    params, kv = layer
    dtype = jnp.dtype(config.dtype)
    p = {name: value.astype(dtype) for name, value in params.items()}
    eps = config.rms_norm_eps
    inv_freq = layers.rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)

    h = layers.rms_norm(x, p["attn_norm"], eps)
    q = jnp.einsum("btd,dhk->bthk", h, p["wq"])
    k = jnp.einsum("btd,dhk->bthk", h, p["wk"])
    v = jnp.einsum("btd,dhk->bthk", h, p["wv"])
    if config.attention_bias:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    if config.qk_norm:
        q = layers.rms_norm(q, p["q_norm"], eps)
        k = layers.rms_norm(k, p["k_norm"], eps)
    q = constrain(layers.apply_rope(q, positions, inv_freq), ("batch", None, "act_heads", None), rules)
    k = layers.apply_rope(k, positions, inv_freq)
    if hasattr(kv, "attend"):
        out, new_cache = kv.attend(q, k, v, mask=mask, slots=slots, kv_len=kv_len)
    else:
        out, new_cache = _attend_stacked(q, k, v, kv, mask=mask, slots=slots,
                                         kv_len=kv_len, dtype=dtype, rules=rules,
                                         paged_lengths=_paged_lengths(config, kv, positions))
    x = x + jnp.einsum("bthk,hkd->btd", out, p["wo"])
    x = constrain(x, ("batch", None, None), rules)

    h = layers.rms_norm(x, p["mlp_norm"], eps)
    x = x + layers.swiglu(h, p["w_gate"], p["w_up"], p["w_down"])
    x = constrain(x, ("batch", None, None), rules)
    return x, new_cache


def _paged_lengths(config: ModelConfig, kv, positions: jax.Array) -> jax.Array | None:
    """[B]: the slots each row's query reads through the paged decode kernel (its own
    token's included), when this layer runs it: a decode step (one token per row) over the
    stacked bf16 cache with `decode_attention = "paged"`; else None (einsum)."""
    decode_step = positions.shape[1] == 1 and kv is not None and not hasattr(kv, "attend")
    if config.decode_attention != "paged" or not decode_step:
        return None
    k_all = kv[0]
    if isinstance(k_all, QuantizedKV) or k_all.dtype != jnp.bfloat16 or \
            not paged.supports(k_all.shape[3], k_all.shape[-1], quantized=False):
        return None
    return jnp.clip(positions[:, 0] + 1, 1, k_all.shape[3])


def _attend_stacked(q, k, v, kv, *, mask, slots, kv_len, dtype, rules, paged_lengths=None):
    """`decoder_layer`'s attention with no cache (kv None) or the stacked caches
    (k_all, v_all, index). q: [B, T, H, Dh], k, v: [B, T, K, Dh] (the new tokens').
    paged_lengths [B] (`_paged_lengths`): read each row's first slots through the paged
    kernel, whatever kv_len says."""
    new_k, new_v = k, v
    new_cache = None
    k_scale = v_scale = None
    if kv is not None:
        k_all, v_all, index = kv
        k_all, v_all = (_write_slots(all_, new, index, slots)
                        for all_, new in ((k_all, k), (v_all, v)))
        (k, k_scale), (v, v_scale) = (_layer_slots(all_, index) for all_ in (k_all, v_all))
        new_cache = (k_all, v_all)
        if paged_lengths is not None:
            return paged.paged_decode_attention(q, k, v, paged_lengths, rules), new_cache
        k, v = k.transpose(1, 2, 0, 3), v.transpose(1, 2, 0, 3)      # [B, S, K, Dh]
        if k_scale is not None:
            k_scale, v_scale = k_scale.transpose(1, 2, 0), v_scale.transpose(1, 2, 0)
    if kv_len is not None:
        k, v = k[:, :kv_len], v[:, :kv_len]
        if k_scale is not None:
            k_scale, v_scale = k_scale[:, :kv_len], v_scale[:, :kv_len]
    k = constrain(k, ("batch", None, "act_kv_heads", None), rules)
    v = constrain(v, ("batch", None, "act_kv_heads", None), rules)
    if isinstance(mask, splash.Segments):
        if mask.new_tokens_only:  # a prefill: the cache held nothing before these tokens
            k, v = new_k, new_v
        return splash.splash_attention(q, k.astype(dtype), v.astype(dtype), mask.ids,
                                       rules), new_cache
    if k_scale is None:
        k, v = k.astype(dtype), v.astype(dtype)
    return layers.attention(q, k, v, mask, k_scale, v_scale), new_cache


def _write_slots(cache, new, index, slots):
    """Layer `index`'s keys or values new [B, T, K, Dh] written at slots [B, T] of the
    stacked cache [L, K, B, S, Dh] or its `QuantizedKV` (slots out of range: skipped)."""
    if isinstance(cache, QuantizedKV):
        values, scale = layers.quantize_kv(new)
        return QuantizedKV(values=_scatter_layer_rows(cache.values, values, index, slots),
                           scale=_scatter_layer_rows(cache.scale, scale, index, slots))
    return _scatter_layer_rows(cache, new, index, slots)


def _scatter_layer_rows(stacked, values, index, slots):
    """stacked [L, K, B, S, ...] with values [B, T, K, ...] written at
    (index, k, b, slots[b, t]).

    One scatter in place over the stacked array, indexed by (layer, head, row, slot): the
    head and row indices are iotas, which XLA's partitioner reads as parallel dimensions,
    so the update stays split over heads and rows like the cache. Each update window is
    one head's Dh values, so XLA keeps the cache heads-major (with the heads in the window
    it lays the cache out [B, S, K, Dh] and copies it for the paged kernel). (A vmap over
    the rows would move them to the front: a transposed copy of the whole cache; a scatter
    with batching dimensions is expanded into a loop on TPU.)
    """
    heads = jnp.arange(stacked.shape[1], dtype=jnp.int32)[:, None, None]
    rows = jnp.arange(slots.shape[0], dtype=jnp.int32)[None, :, None]
    values = jnp.moveaxis(values, 2, 0)          # [K, B, T, ...]
    return stacked.at[index, heads, rows, slots[None]].set(values.astype(stacked.dtype),
                                                          mode="drop")


def _layer_slots(cache, index):
    """Layer `index` of a stacked cache: (values [K, B, S, Dh], scales [K, B, S] or None)."""
    take = functools.partial(jax.lax.dynamic_index_in_dim, index=index, keepdims=False)
    if isinstance(cache, QuantizedKV):
        return take(cache.values), take(cache.scale)
    return take(cache), None
