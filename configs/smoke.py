"""Smoke run: a tiny *random* Llama-family model, the shipped tokenizer, the bundled sample QA
rows. 20 steps in about a minute on 2 CPU cores (2 s a step, most of it our ~450-token
instruction: prompts are padded to 512), no download. It shows that the pipeline
runs (rollout, reward, update, checkpoints, logs), not that anything is learned; the quick
start that learns is configs/tiny.py (the toy world).

    python -m ssrl_jax.train --config configs/smoke.py
"""

from ssrl_jax.train_config import default_config


def get_config():
    c = default_config()
    c.total_steps = 20
    c.batch_size = 4
    c.model.tokenizer = "quickstart"
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.model.random.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16)
    c.data.chat = "false"
    c.rollout.group_size = 4
    c.rollout.max_new_tokens = 48
    c.optim.learning_rate = 1e-3
    c.optim.warmup_ratio = 0.1
    c.checkpoint.every_steps = 10
    c.log.samples_every_steps = 10
    return c
