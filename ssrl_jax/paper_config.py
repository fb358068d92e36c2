"""The papers' training run (SPEC §5) for one published model: what the TPU configs share.

`configs/llama8b.py` and its siblings differ only in the model directory name and the mesh.
"""

from __future__ import annotations

import ml_collections

from ssrl_jax.train_config import default_config

BUCKET = "gs://YOUR_BUCKET"


def paper_config(model_name: str, *, fsdp: int, tensor: int) -> ml_collections.ConfigDict:
    """SSRL self-search GRPO of `model_name` (a Hugging Face directory under the bucket).

    `default_config()` already holds SPEC §5: 256 prompts × 5 samples, lr 1e-6 with 2%
    warm-up, KL 0.001 (low_var_kl), prompts ≤ 1024 and responses ≤ 4096 tokens, 5 epochs.
    `fsdp=-1` spreads FSDP over all chips the tensor axis leaves.
    """
    c = default_config()
    # A Hugging Face directory (weights, config.json, tokenizer), local or gs://.
    c.model.path = f"{BUCKET}/hf/{model_name}"
    # Search-R1's nq_hotpotqa_train (verl parquet); FlashRAG jsonl files work too.
    c.data.train_files = f"{BUCKET}/data/nq_hotpotqa_train/train.parquet"
    c.mesh.update(data=1, fsdp=fsdp, tensor=tensor)
    # fp32 master weights and Adam state, bf16 compute, rollout and KL reference (as verl's
    # fp32 actor and MaxText's weight_dtype=float32); stated here as well as in the defaults
    # because the memory plan depends on it.
    c.model.update(param_dtype="float32", dtype="bfloat16")
    # JAX's splash attention kernel for the training forward and backward: no [T, T] scores
    # per layer in memory (docs/performance.md, TPU plans).
    c.model.attention = "splash"
    # Decode steps read each row's own filled slots through JAX's paged attention kernel
    # (llama8b on v5p-128, worst case: rollout 22.6 -> 19.3 s; docs/performance.md).
    c.model.decode_attention = "paged"
    # The backward recomputes the elementwise ops but keeps the matmul outputs: 8 FLOPs per
    # parameter and token instead of full remat's 10 (update 21.3 -> 18.7 s on the llama8b
    # roofline), at no cost in peak memory, which the rollout sets (23.0 GiB per chip on
    # v5p-128 either way; docs/performance.md).
    c.model.remat = "dots"
    # One response per FSDP shard per micro-batch: the training forward holds one row's
    # attention scores per device at a time (docs/performance.md, memory plan).
    c.grpo.num_micro_batches = 80
    c.checkpoint.every_steps = 25
    return c
