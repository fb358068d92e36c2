"""Causal self-attention of whole sequences through JAX's splash attention kernel.

The Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) computes
attention block by block with an online softmax: it never holds the [T, T] scores
(12.5 GiB per chip in the f32 einsum path of an 8B model at 5,120 slots), skips the
blocks above the causal diagonal, and has its own backward pass. Padding and packing
enter as segment ids: a token attends to earlier tokens of its own segment; padding
is segment 0, so a real token never sees it. Off TPU the kernel runs in Pallas'
interpret mode (exact, slow: for tests). Mosaic kernels are not partitioned by XLA,
so under a mesh the kernel runs per shard in `shard_map` (rows over the batch axes,
heads over tensor).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec

from ssrl_jax.sharding import ShardingRules

BLOCK = 128            # sequence lengths are padded to a multiple of this
MAX_BLOCK = 512        # the largest tile used when the length allows it


class Segments(NamedTuple):
    """What a layer attends with under splash attention, in place of a dense mask."""

    ids: jax.Array  # [B, T] int32 from `segment_ids_of`
    # A prefill: the layer attends over the T new tokens, not the cache they are written to.
    new_tokens_only: bool = False


def segment_ids_of(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T] int32: 0 on padding, else 1 (or the packed example's id + 1)."""
    ids = jnp.ones(attention_mask.shape, jnp.int32) if segment_ids is None else segment_ids + 1
    return jnp.where(attention_mask, ids.astype(jnp.int32), 0)


def target_platform() -> str:
    """The platform the program is being compiled for: the mesh's devices (which may be a
    TPU topology compiled for from a CPU host), else the default backend."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                     rules: ShardingRules | None = None) -> jax.Array:
    """q: [B, T, H, Dh], k/v: [B, T, K, Dh], segment_ids: [B, T] -> [B, T, H, Dh] in q.dtype.

    Causal attention within segments, softmax in fp32 inside the kernel.
    """
    interpret = target_platform() != "tpu"
    local = functools.partial(_attend, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return local(q, k, v, segment_ids)
    q_spec = rules.spec(("batch", None, "act_heads", None), q.shape, mesh)
    kv_spec = rules.spec(("batch", None, "act_kv_heads", None), k.shape, mesh)
    if kv_spec[2] != q_spec[2]:
        # KV heads cannot be split like the query heads (e.g. 2 KV heads, tensor=4): give
        # every query head its own copy so each shard holds whole groups.
        k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
        v = jnp.repeat(v, q.shape[2] // v.shape[2], axis=2)
        kv_spec = q_spec
    rows = PartitionSpec(q_spec[0], None)
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, rows), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


def _attend(q, k, v, segment_ids, *, interpret: bool):
    """The kernel on one shard's rows and heads (shapes as `splash_attention`)."""
    t = q.shape[1]
    padded = -(-t // BLOCK) * BLOCK
    if padded != t:
        pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, pad), jnp.pad(k, pad), jnp.pad(v, pad)
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - t)))  # padding: segment 0
    block = next(b for b in (MAX_BLOCK, 256, BLOCK) if padded % b == 0)
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                                  block_q_dkv=block, block_kv_dkv=block,
                                  block_kv_dkv_compute=block, block_q_dq=block,
                                  block_kv_dq=block)
    heads = q.shape[2]
    mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((padded, padded))] * heads)
    kernel = kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                        interpret=interpret)
    scale = 1.0 / math.sqrt(q.shape[-1])
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B, T, H, D] -> [B, H, T, D]
    out = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(ids, ids)))(
        heads_first(q), heads_first(k), heads_first(v), segment_ids)
    return heads_first(out)[:, :t]
