"""SSRL-GRPO on the toy world, the run measured in docs/toyworld.md: the shipped tiny Llama that
knows part of an invented world, trained on the world's training questions for 60 steps.
10-15 minutes on 2 idle CPU cores.

    python -m ssrl_jax.train --config configs/toyworld.py --workdir /tmp/toyworld
    python -m ssrl_jax.train --config configs/toyworld.py --config.grpo.mask_information=false

The model and questions are made by `python -m ssrl_jax.toyworld.pretrain` (it writes
`ssrl_jax/assets/toyworld/`); the settings are in `ssrl_jax/toyworld/config.py`.
"""

from ssrl_jax.toyworld.config import toyworld_config


def get_config():
    return toyworld_config(steps=60)
