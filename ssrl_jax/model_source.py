"""Where a run's model and tokenizer come from: a Hugging Face directory (local, or copied
from GCS), an Orbax checkpoint (`convert hf-to-orbax` output, or a run's workdir), or a random
model of `config.model.random` with the quick-start tokenizer; and the ids that end a row."""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

from ssrl_jax import checkpoints
from ssrl_jax import train_config as tc
from ssrl_jax.cli_errors import read_json_file
from ssrl_jax.models import ModelConfig, Transformer, init_model, load_pretrained
from ssrl_jax.models.remote import local_model_dir
from ssrl_jax.sharding import ShardingRules

TOKENIZER_SUBDIR = "tokenizer"


def load_tokenizer(config: ml_collections.ConfigDict, model_dir: str | None) -> tuple[Any, str]:
    """(tokenizer, the local directory it was read from)."""
    from transformers import AutoTokenizer

    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    name = config.model.tokenizer or model_dir
    if name == tc.QUICKSTART_TOKENIZER:
        path = quickstart_tokenizer_path()
    else:
        path = local_model_dir(name, config.model.cache_dir)
    try:
        return AutoTokenizer.from_pretrained(path), path
    except (OSError, ValueError) as error:
        raise tc.ConfigFieldError(f"config.model.tokenizer / model.path: cannot load a "
                                  f"tokenizer from {path}: {error}") from error


def use_chat(setting: str, tokenizer: Any) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if setting == "true" and not has_template:
        raise tc.ConfigFieldError("config.data.chat='true' but the tokenizer has no chat "
                                  "template")
    return has_template if setting == "auto" else setting == "true"


def model_checkpoint_meta(config: ml_collections.ConfigDict) -> dict | None:
    """The meta of the Orbax checkpoint `config.model.path` names, else None.

    A checkpoint (`convert hf-to-orbax` output, or a run's workdir) is how a pod loads a
    model: each host restores only its own shards, with no copy of the whole directory.
    """
    path = config.model.path
    if not path or not checkpoints.is_checkpoint_path(path):
        return None
    try:
        return checkpoints.read_meta(path)[1]
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is reported alike
        raise tc.ConfigFieldError(f"config.model.path={path!r}: cannot read the checkpoint "
                                  f"({type(error).__name__}: {error})") from error


def runtime_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The `ModelConfig` fields that `config.model` chooses for any checkpoint (ours, not
    Hugging Face's): dtypes, rematerialisation, attention, the KV cache's dtype, the decode
    step's attention."""
    m = config.model
    return dict(param_dtype=m.param_dtype, dtype=m.dtype, remat=m.remat, attention=m.attention,
                kv_cache_dtype=m.kv_cache_dtype, decode_attention=m.decode_attention)


def model_builder(config: ml_collections.ConfigDict, model_dir: str | None, tokenizer: Any,
                  mesh: jax.sharding.Mesh, rules: ShardingRules,
                  checkpoint_meta: dict | None = None
                  ) -> tuple[ModelConfig, Callable[[], Transformer]]:
    """(model config, a function that builds the initial model on `mesh`)."""
    m = config.model
    fields = runtime_fields(config)
    if checkpoint_meta is not None:
        model_config = checkpoints.model_config_from_meta(checkpoint_meta, source=m.path,
                                                          **fields)
        return model_config, lambda: checkpoints.load_model(m.path, mesh=mesh, rules=rules,
                                                            **fields)[0]
    if model_dir:
        from ssrl_jax.models.hf import read_hf_config

        model_config = ModelConfig.from_hf_config(
            read_hf_config(model_dir), source=os.path.join(model_dir, "config.json"), **fields)
        return model_config, functools.partial(load_pretrained, model_dir, mesh=mesh,
                                               rules=rules, **fields)
    model_config = ModelConfig(
        **m.random.to_dict(), vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **fields)
    return model_config, functools.partial(init_model, model_config, seed=config.seed,
                                           mesh=mesh, rules=rules)


def eos_and_pad(model_dir: str | None, model_config: ModelConfig, tokenizer: Any,
                generation_config: dict | None = None) -> tuple[tuple[int, ...], int]:
    from ssrl_jax.sampler.text import eos_ids

    ids = eos_ids(model_dir, model_config, tokenizer) if model_dir else tuple(
        i for i in (tokenizer.eos_token_id,) if i is not None)
    extra = (generation_config or {}).get("eos_token_id")
    extra = [] if extra is None else [extra] if isinstance(extra, int) else list(extra)
    ids = tuple(dict.fromkeys([*ids, *(i for i in extra if 0 <= i < model_config.vocab_size)]))
    if not ids:
        raise tc.ConfigFieldError("config.model: neither the model nor the tokenizer names an "
                                  "end-of-sequence token")
    pad = tokenizer.pad_token_id
    return ids, ids[0] if pad is None else pad


def save_tokenizer(tokenizer: Any, workdir: epath.Path) -> epath.Path:
    """Copies the tokenizer into WORKDIR/tokenizer (what checkpoints point to)."""
    target = workdir / TOKENIZER_SUBDIR
    if jax.process_index() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            target.mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(tmp)):
                epath.Path(tmp, name).copy(target / name, overwrite=True)
    return target


def source_generation_config(model_dir: str | None) -> dict | None:
    """The source model's generation_config.json (kept so an export carries its defaults)."""
    from ssrl_jax.sampler.text import GENERATION_CONFIG_FILE

    path = os.path.join(model_dir, GENERATION_CONFIG_FILE) if model_dir else None
    if path is None or not os.path.isfile(path):
        return None
    return read_json_file(path)
