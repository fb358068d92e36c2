"""What makes a training run the same run: stored with every checkpoint, compared on resume.

A resumed run must continue the one that wrote the checkpoints: the same model shape and
parameter dtype, tokenizer, seed (it fixes every step's PRNG key and, for a random model,
the KL reference), batch and group size, and training data. The identity is a flat
{"field": value} dict so that a mismatch can be reported field by field (old → new).
Checkpoints written before identities were stored are compared on what their saved
config and model description still tell.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

# Config fields (dotted) that belong to the run's identity.
CONFIG_FIELDS = ("seed", "batch_size", "rollout.group_size", "data.train_files", "data.weights",
                 "data.prompt_mode", "data.chat", "data.shuffle")


def _sha256(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dotted(config: Mapping[str, Any], field: str) -> Any:
    value: Any = config
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def model_fields(model_meta: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.<hf config key>": value, "model.param_dtype": ...} of `checkpoints.model_meta`."""
    fields = {f"model.{k}": v for k, v in model_meta["hf_config"].items()
              if k not in ("torch_dtype", "dtype", "transformers_version")}
    fields["model.param_dtype"] = model_meta["param_dtype"]
    return fields


def tokenizer_fields(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and a hash of the vocabulary, special tokens and chat template."""
    return {"tokenizer.vocab_size": len(tokenizer),
            "tokenizer.sha256": _sha256([sorted(tokenizer.get_vocab().items()),
                                         list(tokenizer.all_special_tokens),
                                         getattr(tokenizer, "chat_template", None)])}


def data_fields(rows: Sequence[Any]) -> dict[str, Any]:
    """Row count and a hash of every row's question and golden answers, in order."""
    return {"data.rows": len(rows),
            "data.sha256": _sha256([[r.question, list(r.golden_answers)] for r in rows])}


def config_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"config.{field}": _dotted(config, field) for field in CONFIG_FIELDS}


def run_identity(config: ml_collections.ConfigDict, model_meta: Mapping[str, Any],
                 tokenizer: Any, rows: Sequence[Any]) -> dict[str, Any]:
    return {**model_fields(model_meta), **tokenizer_fields(tokenizer), **data_fields(rows),
            **config_fields(config.to_dict())}


def identity_of_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored identity, or what its config and model description give."""
    if "identity" in meta:
        return dict(meta["identity"])
    fields = model_fields(meta["model"]) if "model" in meta else {}
    if "config" in meta:
        fields.update(config_fields(meta["config"]))
    return fields


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) for each field both identities hold with different values."""
    return [(field, old[field], new[field]) for field in sorted(set(old) & set(new))
            if _normalise(old[field]) != _normalise(new[field])]


def _normalise(value: Any) -> Any:
    """JSON round trip: tuples and lists compare equal, as they do once saved."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def describe(diffs: Iterable[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{field}: {old!r} → {new!r}" for field, old, new in diffs)
