"""Pure functions for the decoder's math, following Hugging Face's conventions.

Shapes: B batch, T query length, S key length, D hidden, H query heads, K KV heads,
G = H // K, Dh head dim, F MLP width.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from ssrl_jax.models.config import RopeScaling

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, cast back to the input dtype before the weight (as HF).

    x: [..., N], weight: [N] -> [..., N] in x.dtype.
    """
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """Inverse frequencies [Dh/2] in fp32, with Llama 3 frequency scaling if given."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding. x: [B, T, N, Dh], positions: [B, T] -> [B, T, N, Dh]."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions [B, T] from a validity mask [B, T]: 0.. on valid tokens, left or right padded."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions [B, T] that restart at 0 wherever segment_ids [B, T] changes value."""
    t = segment_ids.shape[-1]
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[..., :1], bool),
                              segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
    segment_start = jax.lax.cummax(jnp.where(starts, index, 0), axis=segment_ids.ndim - 1)
    return index - segment_start


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              k_scale: jax.Array | None = None, v_scale: jax.Array | None = None) -> jax.Array:
    """Grouped-query attention with fp32 softmax.

    q: [B, T, H, Dh], k/v: [B, S, K, Dh], mask: [B, T, S] (True = may attend)
    -> [B, T, H, Dh] in q.dtype. A query with no visible key gets a uniform
    (finite) average instead of NaN; such queries are padding and are ignored.
    k_scale, v_scale: [B, S, K] fp32 when k / v hold int8 values (`quantize_kv`): the
    scales multiply the scores and the probabilities, not the cache, so the matmuls
    read the int8 values as they are stored.
    """
    b, t, h, dh = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    if k_scale is not None:
        scores = scores * _per_slot(k_scale)
    probs = _masked_softmax(scores, mask, dh)
    if v_scale is not None:
        probs = probs * _per_slot(v_scale)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(q.dtype), v.astype(q.dtype))
    return out.reshape(b, t, h, dh)


def _per_slot(scale: jax.Array) -> jax.Array:
    """[B, S, K] -> [B, K, 1, 1, S], to multiply scores or probabilities [B, K, G, T, S]."""
    return scale.transpose(0, 2, 1)[:, :, None, None, :]


def quantize_kv(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 with one scale per vector. x: [..., Dh] -> (int8 [..., Dh], fp32 [...]).

    x ~= values * scale; the largest |x| of each vector maps to 127 (error <= scale / 2).
    """
    x32 = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x32), axis=-1) / 127.0
    safe = jnp.where(scale > 0, scale, 1.0)
    values = jnp.clip(jnp.round(x32 / safe[..., None]), -127, 127).astype(jnp.int8)
    return values, scale


def attention_over_chunks(q: jax.Array, k_chunks: Sequence[jax.Array],
                          v_chunks: Sequence[jax.Array], mask: jax.Array) -> jax.Array:
    """`attention` over a cache held as consecutive chunks of slots, heads before slots.

    q: [B, T, H, Dh]; k_chunks[i], v_chunks[i]: [B, K, C_i, Dh], slots in order, S = sum
    C_i; mask: [B, T, S] -> [B, T, H, Dh] in q.dtype. Each chunk feeds its own batched
    matmuls as it lies in memory: XLA:CPU copies a [B, S, K, Dh] cache transposed, and a
    slice of any cache, before a batched matmul can read it.
    """
    b, t, h, dh = q.shape
    kv_heads = k_chunks[0].shape[1]
    q = q.reshape(b, t, kv_heads, h // kv_heads, dh)
    scores = jnp.concatenate([jnp.einsum("btkgd,bksd->bkgts", q, k,
                                         preferred_element_type=jnp.float32)
                              for k in k_chunks], axis=-1)
    probs = _masked_softmax(scores, mask, dh).astype(v_chunks[0].dtype)
    edges = list(itertools.accumulate(v.shape[2] for v in v_chunks))
    out = sum(jnp.einsum("bkgts,bksd->bkgtd", probs[..., start:end], v,
                         preferred_element_type=jnp.float32)
              for start, end, v in zip([0] + edges, edges, v_chunks))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh).astype(q.dtype)


def _masked_softmax(scores: jax.Array, mask: jax.Array, head_dim: int) -> jax.Array:
    """Scaled, masked softmax. scores: [B, K, G, T, S] fp32, mask: [B, T, S] -> same shape."""
    scores = scores / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """SwiGLU MLP. x: [B, T, D], w_gate/w_up: [D, F], w_down: [F, D] -> [B, T, D]."""
    gate = jax.nn.silu(x @ w_gate)
    return (gate * (x @ w_up)) @ w_down
