"""Our parameters -> a Hugging Face directory that `transformers` and vLLM load as it is.

    export_hf(model, model.config, "out/hf", dtype="bfloat16", tokenizer_dir="run/tokenizer")

writes into `out/hf/`:

    config.json                      `to_hf_config()` with the exported dtype
    generation_config.json           bos / eos / pad ids (eos a list when several)
    model.safetensors                when everything fits in one shard, else
    model-0000K-of-0000N.safetensors + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json, chat_template.jinja, ...   (copied)

The name mapping and layouts come from `hf.tensor_specs`, the same table that
loading uses, so export is its exact inverse. Tensors are streamed: a stacked
parameter is pulled from the devices one layer at a time, cast on device, and
collected into a shard buffer that is written once full, so host memory stays
at about one shard (plus the copy `safetensors` makes while writing it).
Shards are planned from the shapes before any data moves, so their number is
known up front and no file is renamed. Everything is written into a hidden
sibling directory that replaces `out_dir` only when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from flax import nnx

from ssrl_jax.models.config import DTYPES, ModelConfig
from ssrl_jax.models.hf import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TensorSpec, tensor_specs
from ssrl_jax.safe_paths import check_replaceable

GENERATION_CONFIG_FILE = "generation_config.json"  # as ssrl_jax.sampler.text names it
# Files a tokenizer directory may hold; those present are copied.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
)
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Stored in every shard's header: older `transformers` refuse shards without it.
_SHARD_METADATA = {"format": "pt"}

ParamsLike = nnx.Module | nnx.State | Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One tensor of the exported checkpoint: `spec`'s tensor for `layer` (None if unstacked)."""

    name: str
    spec: TensorSpec
    layer: int | None
    nbytes: int


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What `export_hf` wrote: the directory, its files (sorted) and the weight bytes."""

    path: str
    files: tuple[str, ...]
    num_shards: int
    total_bytes: int


# ------------------------------------------------------------------ planning --

def hf_tensors(config: ModelConfig, dtype: str) -> list[HFTensor]:
    """Every HF tensor in file order: embeddings, layer 0 ... layer L-1, final norm, head."""
    itemsize = jnp.dtype(dtype).itemsize
    specs = tensor_specs(config)

    def item(spec: TensorSpec, layer: int | None) -> HFTensor:
        name = spec.hf_names[0 if layer is None else layer]
        return HFTensor(name, spec, layer, int(np.prod(spec.hf_shape)) * itemsize)

    stacked = [s for s in specs if s.stacked]
    head = [item(s, None) for s in specs if not s.stacked and s.ours == ("embed",)]
    tail = [item(s, None) for s in specs if not s.stacked and s.ours != ("embed",)]
    body = [item(s, i) for i in range(config.num_layers) for s in stacked]
    return head + body + tail


def plan_shards(tensors: list[HFTensor], max_shard_bytes: int) -> list[list[HFTensor]]:
    """Groups tensors in order into shards of at most `max_shard_bytes`.

    A tensor larger than the limit gets a shard of its own.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[HFTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{k:05d}-of-{num_shards:05d}.safetensors" for k in range(1, num_shards + 1)]


# ------------------------------------------------------------------ pulling --

def flat_params(model_or_params: ParamsLike) -> dict[tuple[str, ...], Any]:
    """{path: array} of a model, an `nnx.State` of params or a pure dict (as Orbax restores)."""
    if isinstance(model_or_params, nnx.Module):
        model_or_params = nnx.state(model_or_params, nnx.Param)
    if isinstance(model_or_params, nnx.State):
        return {tuple(map(str, path)): var.get_value() if isinstance(var, nnx.Variable) else var
                for path, var in nnx.to_flat_state(model_or_params)}

    def walk(tree: Mapping[str, Any],
             prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from walk(value, prefix + (str(key),))
            else:
                yield prefix + (str(key),), value

    return dict(walk(model_or_params, ()))


def _hf_shape(spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The HF shape `spec.to_hf` makes of one tensor of our `shape`; None if it cannot."""
    try:
        return tuple(jax.eval_shape(spec.to_hf, jax.ShapeDtypeStruct(shape, jnp.int8)).shape)
    except (TypeError, ValueError):
        return None


def check_params(params: Mapping[tuple[str, ...], Any], config: ModelConfig) -> None:
    """Raises ValueError naming every parameter that is missing, mis-shaped or off-host."""
    problems = []
    for spec in tensor_specs(config):
        path = "/".join(spec.ours)
        if spec.ours not in params:
            problems.append(f"{path}: missing")
            continue
        array = params[spec.ours]
        expected = (config.num_layers,) if spec.stacked else ()
        if spec.stacked and tuple(array.shape[:1]) != expected:
            problems.append(f"{path}: shape {tuple(array.shape)}, expected {config.num_layers} "
                            "layers on axis 0")
        elif _hf_shape(spec, tuple(array.shape[len(expected):])) != spec.hf_shape:
            problems.append(f"{path}: shape {tuple(array.shape)} does not match the config")
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            problems.append(f"{path}: not fully addressable from this process; export on one "
                            "host (python -m ssrl_jax.convert orbax-to-hf)")
    if problems:
        raise ValueError("export_hf: parameters do not match the config: " + "; ".join(problems))


@functools.partial(jax.jit, static_argnames="dtype")
def _device_layer(stacked: jax.Array, index: jax.Array, dtype: str) -> jax.Array:
    # A traced index: one compilation per parameter, not per layer.
    return jax.lax.dynamic_index_in_dim(stacked, index, axis=0, keepdims=False).astype(dtype)


def host_tensor(params: Mapping[tuple[str, ...], Any], tensor: HFTensor, dtype: str) -> np.ndarray:
    """The HF tensor as a contiguous host array of `dtype` (bf16 as `ml_dtypes.bfloat16`)."""
    array = params[tensor.spec.ours]
    if isinstance(array, jax.Array):
        if tensor.layer is not None:
            array = _device_layer(array, jnp.int32(tensor.layer), dtype)
        host = np.asarray(array.astype(dtype))
    else:
        host = np.asarray(array if tensor.layer is None else array[tensor.layer])
        host = host.astype(jnp.dtype(dtype))
    return np.ascontiguousarray(tensor.spec.to_hf(host))


# ----------------------------------------------------------- side files ------

def copy_tokenizer_files(source: str | os.PathLike, destination: str | os.PathLike) -> list[str]:
    """Copies the tokenizer files present in `source` to `destination` (each local or gs://).

    Returns the names copied; raises FileNotFoundError unless they make a tokenizer.
    """
    source, destination = epath.Path(source), epath.Path(destination)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: tokenizer directory not found")
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            data = (source / name).read_bytes()
            if name == "tokenizer_config.json":
                data = portable_tokenizer_config(data, fast=(source / "tokenizer.json").is_file())
            (destination / name).write_bytes(data)
            copied.append(name)
    if "tokenizer_config.json" not in copied or not {"tokenizer.json", "tokenizer.model",
                                                      "vocab.json"} & set(copied):
        raise FileNotFoundError(
            f"{source}: not a tokenizer directory (needs tokenizer_config.json and "
            "tokenizer.json, tokenizer.model or vocab.json)")
    return copied


def portable_tokenizer_config(data: bytes, *, fast: bool) -> bytes:
    """tokenizer_config.json as transformers 4.4x-4.5x and 5.x all read it.

    transformers 5 saves two things transformers 4 (and so many vLLM installs)
    cannot read:
    - `"tokenizer_class": "TokenizersBackend"`: both load a tokenizer.json
      (`fast`) as `PreTrainedTokenizerFast`.
    - `"extra_special_tokens"` as a list (Qwen's <|im_start|>, ...): 4.x reads
      that key as a dict of named tokens (AttributeError: 'list' object has no
      attribute 'keys'). The list is written as `additional_special_tokens`,
      which 4.x reads as such and 5.x renames back to `extra_special_tokens`.
    Files that need neither change are returned as they are.
    """
    config = json.loads(data)
    changed = False
    if fast and config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        additional = list(config.get("additional_special_tokens") or [])
        config["additional_special_tokens"] = additional + [t for t in extra
                                                            if t not in additional]
        del config["extra_special_tokens"]
        changed = True
    if not changed:
        return data
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()


def tokenizer_special_ids(tokenizer_dir: str | os.PathLike) -> dict[str, int]:
    """{"bos_token_id", "eos_token_id", "pad_token_id"} that the tokenizer files name.

    Read from tokenizer_config.json (token strings) and the ids in its
    `added_tokens_decoder` or in tokenizer.json; ids not found are left out.
    """
    directory = epath.Path(tokenizer_dir)
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        return {}
    config = json.loads(config_path.read_text())
    ids: dict[str, int] = {}
    for token_id, token in config.get("added_tokens_decoder", {}).items():
        ids[token.get("content")] = int(token_id)
    if (directory / "tokenizer.json").is_file():
        tokenizer = json.loads((directory / "tokenizer.json").read_text())
        ids.update({t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", [])})
        vocab = (tokenizer.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            ids = {**vocab, **ids}
    found = {}
    for role in ("bos", "eos", "pad"):
        token = config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token in ids:
            found[f"{role}_token_id"] = int(ids[token])
    return found


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def generation_config_for(config: ModelConfig, *, base: Mapping[str, Any] | None = None,
                          tokenizer_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """generation_config.json contents: `base` (e.g. the source model's) with its ids completed.

    eos is every id that ends generation (base's, config.json's, the
    tokenizer's eos token), as an int when one and a list when several, like
    the sampler's `eos_ids`. bos / pad come from base, else the config, else
    the tokenizer.
    """
    tokenizer = tokenizer_special_ids(tokenizer_dir) if tokenizer_dir else {}
    # `_from_model_config` tells transformers it may re-derive the file from config.json,
    # which would drop the ids merged here.
    base = {k: v for k, v in (base or {}).items() if k != "_from_model_config"}
    eos = list(dict.fromkeys(
        i for i in _id_list(base.get("eos_token_id")) + list(config.eos_token_ids)
        + _id_list(tokenizer.get("eos_token_id")) if 0 <= i < config.vocab_size))
    result = dict(base)
    for key, value in (("bos_token_id", config.bos_token_id),
                       ("pad_token_id", config.pad_token_id)):
        if result.get(key) is None:
            result[key] = value if value is not None else tokenizer.get(key)
    result["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
    return result


def hf_config_json(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """config.json for weights stored in `dtype`.

    `to_hf_config` records our parameter dtype; the file must name the stored
    one. `dtype` is what transformers >= 5 reads, `torch_dtype` what older
    readers (and vLLM's) read.
    """
    return {**config.to_hf_config(), "torch_dtype": dtype, "dtype": dtype}


# ----------------------------------------------------------- the directory --

def is_export_file(name: str) -> bool:
    """Whether `name` is a file `export_hf` writes (weights, configs, tokenizer files)."""
    return (name in (CONFIG_FILE, GENERATION_CONFIG_FILE, INDEX_FILE, *TOKENIZER_FILES)
            or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", name) is not None)


def check_out_dir(out_dir: str | os.PathLike, *, overwrite: bool = False,
                  inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> None:
    """Raises FileExistsError if `out_dir` is a file, or a non-empty directory without overwrite;
    UnsafeOverwriteError (`ssrl_jax.safe_paths`) if replacing it would delete one of `inputs`
    ((flag, path) pairs), a training workdir, or files an export does not write."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    check_replaceable(out_dir, flag="--out", inputs=inputs, is_own=is_export_file,
                      what="files of a Hugging Face export")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: directory is not empty (pass overwrite=True / "
                              "--overwrite to replace it)")


def _replace_dir(staging: str, out_dir: str) -> None:
    """Moves the finished `staging` to `out_dir`, replacing what is there."""
    if not os.path.exists(out_dir):
        os.replace(staging, out_dir)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-",
                           dir=os.path.dirname(out_dir))
    os.replace(out_dir, os.path.join(old, "dir"))
    os.replace(staging, out_dir)
    shutil.rmtree(old)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def _write_weights(params: Mapping[tuple[str, ...], Any], config: ModelConfig, directory: str,
                   dtype: str, max_shard_bytes: int) -> tuple[list[str], int]:
    """Writes the shards (and the index when several); returns (file names, weight bytes)."""
    tensors = hf_tensors(config, dtype)
    shards = plan_shards(tensors, max_shard_bytes)
    names = shard_file_names(len(shards))
    weight_map = {}
    for file_name, shard in zip(names, shards):
        buffer = {t.name: host_tensor(params, t, dtype) for t in shard}
        safetensors.numpy.save_file(buffer, os.path.join(directory, file_name),
                                    metadata=_SHARD_METADATA)
        del buffer
        weight_map.update({t.name: file_name for t in shard})
    total = sum(t.nbytes for t in tensors)
    if len(shards) > 1:
        num_params = sum(t.nbytes // jnp.dtype(dtype).itemsize for t in tensors)
        _write_json(os.path.join(directory, INDEX_FILE), {
            "metadata": {"total_size": total, "total_parameters": num_params},
            "weight_map": dict(sorted(weight_map.items()))})
        names = names + [INDEX_FILE]
    return names, total


def export_hf(model_or_params: ParamsLike, config: ModelConfig, out_dir: str | os.PathLike, *,
              dtype: str = "bfloat16", max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
              tokenizer_dir: str | os.PathLike | None = None,
              generation_config: Mapping[str, Any] | None = None,
              overwrite: bool = False,
              inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> ExportSummary:
    """Writes a Hugging Face model directory at `out_dir` (see the module docstring).

    model_or_params: a `Transformer`, its `nnx.State` of params, or the pure
      dict Orbax restores; jax arrays may be sharded over any mesh of this
      process's devices (host numpy arrays work too).
    dtype: the stored dtype, one of float32 / bfloat16 / float16 (cast on device).
    tokenizer_dir: copied into `out_dir`; None writes no tokenizer.
    generation_config: written as given; None derives it from the config and
      the tokenizer (`generation_config_for`).
    Refuses a non-empty `out_dir` unless `overwrite`, and even with it one that holds
    anything but export files, a training workdir, or one of `inputs` ((flag, path)
    pairs; the tokenizer directory is always one); a failed export leaves `out_dir` as
    it was.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if tokenizer_dir is not None:
        inputs = (*inputs, ("tokenizer_dir", tokenizer_dir))
    check_out_dir(out_dir, overwrite=overwrite, inputs=inputs)
    params = flat_params(model_or_params)
    check_params(params, config)
    if generation_config is None:
        generation_config = generation_config_for(config, tokenizer_dir=tokenizer_dir)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        files, total = _write_weights(params, config, staging, dtype, max_shard_bytes)
        _write_json(os.path.join(staging, CONFIG_FILE), hf_config_json(config, dtype))
        _write_json(os.path.join(staging, GENERATION_CONFIG_FILE), dict(generation_config))
        files += [CONFIG_FILE, GENERATION_CONFIG_FILE]
        if tokenizer_dir is not None:
            files += copy_tokenizer_files(tokenizer_dir, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    num_shards = sum(f.endswith(".safetensors") for f in files)
    return ExportSummary(out_dir, tuple(sorted(files)), num_shards, total)
