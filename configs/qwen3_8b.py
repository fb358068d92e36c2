"""Qwen3-8B, SSRL self-search GRPO with the papers' settings (64 chips: 57.1 GiB per chip in
the memory plan).

    python -m ssrl_jax.train --config configs/qwen3_8b.py \
        --config.model.path=gs://BUCKET/hf/Qwen3-8B \
        --config.data.train_files=gs://BUCKET/data/nq_hotpotqa_train/train.parquet \
        --workdir gs://BUCKET/runs/qwen3_8b

Check the per-chip memory first: python -m ssrl_jax.bench memory --config configs/qwen3_8b.py --devices 64
"""

from ssrl_jax.paper_config import paper_config


def get_config():
    # FSDP over all chips but 4-way tensor parallel (32 query / 8 KV heads split by 4).
    return paper_config("Qwen3-8B", fsdp=-1, tensor=4)
