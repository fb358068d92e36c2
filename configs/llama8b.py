"""Llama-3.1-8B-Instruct, SSRL self-search GRPO with the papers' settings on 64 TPU chips
(v5p-128: 23.0 GiB of 95 GiB per chip as compiled by libtpu, fp32 master weights).

    python -m ssrl_jax.train --config configs/llama8b.py \
        --config.model.path=gs://BUCKET/hf/Llama-3.1-8B-Instruct \
        --config.data.train_files=gs://BUCKET/data/nq_hotpotqa_train/train.parquet \
        --workdir gs://BUCKET/runs/llama8b

Check the per-chip memory first (libtpu, no TPU needed):
    python -m ssrl_jax.bench memory --config configs/llama8b.py --topology v5p:4x4x4
"""

from ssrl_jax.paper_config import paper_config


def get_config():
    # 64 chips: 16-way FSDP × 4-way tensor parallel (32 query / 8 KV heads split by 4).
    return paper_config("Llama-3.1-8B-Instruct", fsdp=16, tensor=4)
