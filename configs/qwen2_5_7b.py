"""Qwen2.5-7B-Instruct, SSRL self-search GRPO with the papers' settings (64 chips: 43.3 GiB
per chip in the memory plan).

    python -m ssrl_jax.train --config configs/qwen2_5_7b.py \
        --config.model.path=gs://BUCKET/hf/Qwen2.5-7B-Instruct \
        --config.data.train_files=gs://BUCKET/data/nq_hotpotqa_train/train.parquet \
        --workdir gs://BUCKET/runs/qwen2_5_7b

Check the per-chip memory first: python -m ssrl_jax.bench memory --config configs/qwen2_5_7b.py --devices 64
"""

from ssrl_jax.paper_config import paper_config


def get_config():
    # FSDP over all chips but 4-way tensor parallel (28 query / 4 KV heads split by 4).
    return paper_config("Qwen2.5-7B-Instruct", fsdp=-1, tensor=4)
