"""A CPU-sized invented world in which SSRL visibly works (issue 8).

- ``world``: the seeded generator of entities, facts and questions (single- and multi-hop);
- ``corpus``: one document per entity, in the retriever's corpus jsonl layout;
- ``trajectories``: example self-search trajectories written from the facts (SFT data);
- ``pretrain``: ``python -m ssrl_jax.toyworld.pretrain --out ssrl_jax/assets/toyworld``
  writes the world files and pretrains the tiny Llama shipped in ``ssrl_jax/assets/toyworld``.

See docs/toyworld.md.
"""

import pathlib

from ssrl_jax.package_files import asset_path


def assets_dir() -> pathlib.Path:
    """``ssrl_jax/assets/toyworld``: the shipped world files and model."""
    return asset_path("toyworld")


def model_dir() -> pathlib.Path:
    """The shipped pretrained toy-world model (HF directory)."""
    return assets_dir() / "model"
