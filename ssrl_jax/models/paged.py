"""Decode attention that reads only each row's filled KV slots: JAX's paged attention kernel.

A decode step attends one new token per row over that row's cache. The einsum path reads
every slot it is given (all S, or the KV window's first w) for every row, however few a row
holds. The Pallas TPU kernel (`jax.experimental.pallas.ops.tpu.paged_attention`) instead
copies, per row and KV head, only the pages below the row's length into on-chip memory, so
a step's cache reads follow the rows' own lengths (the compact cache, `KVCache.lengths`).

The kernel takes pages [K, pages, page_size, Dh]. A layer of the stacked cache is
[K, B, S, Dh] (`KVCache`: heads first), which is the pages of every row back to back: row
b's page j is page b * (S / page_size) + j, and the pages are a reshape, not a copy.
Mosaic kernels are not partitioned by XLA: under a mesh the kernel runs per shard in
`shard_map` (rows over the batch axes, KV heads over tensor). Off TPU it runs in Pallas' TPU
interpret mode (slow: for tests). The kernel reads K and V as bf16 whatever their dtype, so
the model uses it for bf16 caches only (`ModelConfig.decode_attention = "paged"`).
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention_kernel as kernel_lib
from jax.sharding import PartitionSpec

from ssrl_jax.models.splash import target_platform
from ssrl_jax.sharding import ShardingRules

PAGE_SIZES = (128, 64, 32, 16, 8)   # the largest that divides S is used
MAX_BLOCK_SLOTS = 512               # slots one compute block of the kernel holds at most


def page_layout(slots: int) -> tuple[int, int]:
    """(page_size, pages per compute block) for a cache of `slots` slots per row."""
    page = next((p for p in PAGE_SIZES if slots % p == 0), None)
    if page is None:
        raise ValueError(f"paged attention: the cache's {slots} slots per row are not a "
                         f"multiple of {PAGE_SIZES[-1]} (set the prompt and response "
                         "lengths so that their sum is)")
    pages = slots // page
    per_block = max(d for d in range(1, pages + 1)
                    if pages % d == 0 and d * page <= max(MAX_BLOCK_SLOTS, page))
    return page, per_block


def supports(num_slots: int, head_dim: int, quantized: bool) -> bool:
    """Whether a decode step over this cache can use the kernel (else the einsum path).
    The kernel's blocks need a head_dim of whole 128-lane tiles (the paper models' 128),
    and an int8 cache is not passed: the kernel wants its scales as large as the values."""
    return not quantized and head_dim % 128 == 0 and num_slots % PAGE_SIZES[-1] == 0


def paged_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array,
                           rules: ShardingRules | None = None) -> jax.Array:
    """One query per row over the first lengths[b] slots of its row.

    q: [B, 1, H, Dh]; k, v: [K, B, S, Dh] (one layer of the cache, the new token written);
    lengths: [B] int32, >= 1. -> [B, 1, H, Dh] in q.dtype (softmax in fp32 in the kernel).
    """
    local = functools.partial(_attend, interpret=target_platform() != "tpu")
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty:
        return local(q, k, v, lengths)
    q_spec = rules.spec(("batch", None, "act_heads", None), q.shape, mesh)
    kv_spec = rules.spec(("act_kv_heads", "batch", None, None), k.shape, mesh)
    if kv_spec[0] != q_spec[2]:
        # KV heads not split like the query heads (e.g. 2 KV heads, tensor = 4): each
        # shard reads its query heads' KV heads whole.
        q_spec = PartitionSpec(q_spec[0], None, kv_spec[0], None)
    rows = PartitionSpec(q_spec[0])
    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec, rows), out_specs=q_spec,
                         check_vma=False)(q, k, v, lengths)


def _attend(q, k, v, lengths, *, interpret: bool):
    """The kernel on one shard's rows and heads (shapes as `paged_decode_attention`)."""
    kv_heads, rows, slots, head_dim = k.shape
    page, per_block = page_layout(slots)
    pages_per_row = slots // page

    def pages(x):   # [K, B, S, Dh] -> [K, B * S / page, page, Dh]
        return x.reshape(kv_heads, rows * pages_per_row, page, head_dim)

    page_indices = (jnp.arange(rows, dtype=jnp.int32)[:, None] * pages_per_row
                    + jnp.arange(pages_per_row, dtype=jnp.int32)[None, :])
    scaled = (q[:, 0].astype(jnp.float32) / math.sqrt(head_dim)).astype(q.dtype)
    with pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext():
        out = kernel_lib.paged_attention(scaled, pages(k), pages(v), lengths.astype(jnp.int32),
                                         page_indices, pages_per_compute_block=per_block)
    return out[:, None].astype(q.dtype)
