"""QA data and prompts.

- ``qa``: the canonical row ``QARow``, ``DataError``, readers (FlashRAG jsonl, verl parquet,
  hub datasets) and the bundled sample file.
- ``pipeline``: weighted mixing and the grain pipeline (per-host shards, shuffling, batching,
  checkpointable iterator state).
- ``prompts``: the self-search and Search-R1 instructions, chat and plain forms.
- ``tiny_tokenizer``: an in-process byte-level BPE for the CPU quick start and tests.
- ``golds``: gold answers as the fixed-size byte arrays a train batch carries.
- ``train_batches``: training rows to the per-host shards of a step's batch arrays.

Names are re-exported lazily, so ``import ssrl_jax.data.prompts`` does not import grain (the
GPU evaluation image has none).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DataError": "qa",
    "QARow": "qa",
    "extract_question": "qa",
    "load_hf_dataset": "qa",
    "read_jsonl": "qa",
    "read_parquet": "qa",
    "read_qa": "qa",
    "sample_data_path": "qa",
    "write_jsonl": "qa",
    "QABatch": "pipeline",
    "collate_rows": "pipeline",
    "make_qa_dataset": "pipeline",
    "make_qa_iterator": "pipeline",
    "mix_datasets": "pipeline",
    "num_batches": "pipeline",
    "build_prompt": "prompts",
    "build_prompts": "prompts",
    "instruction": "prompts",
    "prompt_token_ids": "prompts",
    "train_tiny_tokenizer": "tiny_tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ssrl_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ssrl_jax.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
