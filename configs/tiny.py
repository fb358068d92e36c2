"""CPU quick start: SSRL-GRPO on the toy world (docs/toyworld.md), no download. The shipped
0.85M-parameter Llama knows part of an invented world; 10 steps of 8 fixed training questions
× 8 samples raise the mean reward from about 0.43 to about 0.53 (about 1.5 minutes on 2 idle
CPU cores). Every step samples the same 8 questions, so the printed reward moves with the policy,
not with which questions were drawn.

    python -m ssrl_jax.train --config configs/tiny.py

configs/toyworld.py trains on all 189 training questions (the run docs/toyworld.md measures);
configs/smoke.py is a random model that only shows the pipeline runs.
"""

from ssrl_jax.toyworld import assets_dir
from ssrl_jax.toyworld.config import toyworld_config


def get_config():
    c = toyworld_config(steps=10)
    c.data.train_files = str(assets_dir() / "quickstart.jsonl")
    return c
