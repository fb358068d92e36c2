"""CPU quick start: SSRL-GRPO on the toy world (docs/toyworld.md), no download. The shipped
0.85M-parameter Llama knows part of an invented world; 10 steps of 8 fixed training questions
× 8 samples raise the mean reward from about 0.29 to about 0.50 (about 1.5 minutes on 2 idle
CPU cores). Every step samples the same 8 questions, so the printed reward moves with the policy,
not with which questions were drawn.

    python -m ssrl_jax.train --config configs/tiny.py

The same with real search (Search-R1 style) against a BM25 server over the toy corpus
(docs/search.md, "The tiny config with real search"):

    python -m ssrl_jax.search.index --corpus ssrl_jax/assets/toyworld/corpus.jsonl --out /tmp/toy_bm25
    python -m ssrl_jax.search.server --index /tmp/toy_bm25 --port 8000 &
    python -m ssrl_jax.train --config configs/tiny.py:real

configs/toyworld.py trains on all 189 training questions (the run docs/toyworld.md measures);
configs/smoke.py is a random model that only shows the pipeline runs.
"""

from ssrl_jax.toyworld import assets_dir
from ssrl_jax.toyworld.config import toyworld_config

VARIANTS = ("", "real")


def get_config(variant: str = ""):
    if variant not in VARIANTS:
        raise ValueError(f"configs/tiny.py:{variant}: unknown variant; use configs/tiny.py or "
                         "configs/tiny.py:real")
    c = toyworld_config(steps=10)
    c.data.train_files = str(assets_dir() / "quickstart.jsonl")
    if variant == "real":
        c.rollout.mode = "real"
        c.search.url = "http://127.0.0.1:8000/retrieve"
        # Two injections of up to 500 tokens (1,024-slot buckets) widen each row from 392 to
        # 2,440 slots; the update's attention over them is what needs memory: 63 GB in one
        # micro-batch of all 64 responses, 4.0 GB in 16 of 4 (docs/search.md, "Memory").
        c.grpo.num_micro_batches = 16
    return c
