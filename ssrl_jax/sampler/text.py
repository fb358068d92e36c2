"""Text in, text out: prompts to token ids, EOS ids from a checkpoint, rows to records.

Used by the `generate` CLI and by anything else that starts from strings.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from ssrl_jax.cli_errors import read_json_file
from ssrl_jax.models import ModelConfig
from ssrl_jax.sampler.sources import FinishReason, TokenSource
from ssrl_jax.sampler.state import RowOutput

GENERATION_CONFIG_FILE = "generation_config.json"


def prompt_ids(tokenizer: Any, text: str, *, chat: bool) -> list[int]:
    """Token ids of `text`: as one user turn of the chat template (with the
    assistant header appended) when `chat`, else plain tokenisation."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat: the tokenizer has no chat_template")
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=True)
        ids = encoded if isinstance(encoded, list) else encoded["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError("--prompt: the prompt encodes to no tokens")
    return list(ids)


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


def eos_ids(model_dir: str, config: ModelConfig, tokenizer: Any = None) -> tuple[int, ...]:
    """Every id that ends generation: from config.json, generation_config.json, the tokenizer."""
    ids = list(config.eos_token_ids)
    path = os.path.join(model_dir, GENERATION_CONFIG_FILE)
    if os.path.isfile(path):
        ids += _as_ids(read_json_file(path).get("eos_token_id"))
    if tokenizer is not None:
        ids += _as_ids(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(i for i in ids if 0 <= i < config.vocab_size))


_FINISH_NAMES = {FinishReason.NONE: "length", FinishReason.EOS: "eos",
                 FinishReason.STOP_STRING: "stop_string"}


def completion_record(row: RowOutput, tokenizer: Any, stop_strings: Sequence[str],
                      num_steps: int) -> dict[str, Any]:
    """A JSON-ready record of one row: completion text and per-token outputs."""
    completion = row.completion
    return {
        "completion": tokenizer.decode(completion.tolist(), skip_special_tokens=True),
        "finish_reason": _FINISH_NAMES[row.finish_reason],
        "matched_stop": stop_strings[row.matched_stop] if row.matched_stop >= 0 else None,
        "num_steps": num_steps,
        "tokens": row.tokens.tolist(),
        "sources": [TokenSource(s).name.lower() for s in row.sources],
        "logprobs": [float(x) for x in row.logprobs],
        "entropies": [float(x) for x in row.entropies],
    }
