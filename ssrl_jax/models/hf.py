"""Hugging Face safetensors <-> our parameters: names, layouts and streaming load.

Conversion is renaming, stacking the per-layer tensors on a leading axis, and
transposing / reshaping a Linear's `[out, in]` weight into our einsum layout;
nothing else, so parity with `transformers` can be exact.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from safetensors import SafetensorError, safe_open

from ssrl_jax.cli_errors import UserError, read_json_file
from ssrl_jax.models.config import DTYPES, ConfigError, ModelConfig
from ssrl_jax.models.init import abstract_model, logical_axes_of, single_device_mesh
from ssrl_jax.models.transformer import Transformer, layer_param_shapes
from ssrl_jax.sharding import ShardingRules

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Safetensors dtypes of full-precision weights; integer and 8-bit (quantised) ones are refused.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

_LAYER_HF_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}


class CheckpointError(UserError, ValueError):
    """A Hugging Face checkpoint directory is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """How one of our tensors maps to Hugging Face tensors.

    `ours` is the path in the model state (e.g. ("layers", "wq")); `hf_names`
    lists one HF name, or one per layer for a stacked parameter; `hf_shape` is
    the shape of each HF tensor; `to_ours` / `to_hf` convert one (per-layer)
    tensor between the layouts.
    """

    ours: tuple[str, ...]
    hf_names: tuple[str, ...]
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def stacked(self) -> bool:
        return self.ours[0] == "layers"


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every parameter of the model with its Hugging Face names and layout maps."""
    d, v = config.hidden_size, config.vocab_size
    identity = lambda x: x  # noqa: E731
    transpose = lambda x: x.T  # noqa: E731
    specs = [TensorSpec(("embed",), ("model.embed_tokens.weight",), (v, d), identity, identity)]
    for name, (shape, _) in layer_param_shapes(config).items():
        hf_names = tuple(f"model.layers.{i}.{_LAYER_HF_NAMES[name]}" for i in range(config.num_layers))
        if name in ("wq", "wk", "wv"):  # [H*Dh, D] <-> [D, H, Dh]
            to_ours = lambda x, s=shape: x.T.reshape(s)  # noqa: E731
            to_hf = lambda x, s=shape: x.reshape(s[0], -1).T  # noqa: E731
            hf_shape = (shape[1] * shape[2], shape[0])
        elif name == "wo":  # [D, H*Dh] <-> [H, Dh, D]
            to_ours = lambda x, s=shape: x.T.reshape(s)  # noqa: E731
            to_hf = lambda x, s=shape: x.reshape(-1, s[2]).T  # noqa: E731
            hf_shape = (shape[2], shape[0] * shape[1])
        elif name in ("bq", "bk", "bv"):  # [H*Dh] <-> [H, Dh]
            to_ours = lambda x, s=shape: x.reshape(s)  # noqa: E731
            to_hf = lambda x: x.reshape(-1)  # noqa: E731
            hf_shape = (shape[0] * shape[1],)
        elif name.startswith("w_"):  # Linear [out, in] <-> [in, out]
            to_ours, to_hf, hf_shape = transpose, transpose, shape[::-1]
        else:  # norms
            to_ours, to_hf, hf_shape = identity, identity, shape
        specs.append(TensorSpec(("layers", name), hf_names, tuple(hf_shape), to_ours, to_hf))
    specs.append(TensorSpec(("final_norm",), ("model.norm.weight",), (d,), identity, identity))
    if not config.tie_word_embeddings:
        specs.append(TensorSpec(("lm_head",), ("lm_head.weight",), (v, d), transpose, transpose))
    return specs


# ------------------------------------------------------------------ reading --

def read_hf_config(path: str) -> dict:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{config_path}: not found (a Hugging Face model directory needs config.json)")
    return read_json_file(config_path, error=CheckpointError)


def _open_safetensors(file: str):
    """A memory-mapped safetensors handle; an unreadable file raises CheckpointError naming it."""
    try:
        return safe_open(file, framework="numpy")
    except SafetensorError as e:  # truncated or not a safetensors file at all
        raise CheckpointError(f"cannot read the safetensors file ({e})", file,
                              "download or export it again") from None


class SafetensorsReader:
    """Lazy, memory-mapped access to the tensors of a (possibly sharded) HF directory."""

    def __init__(self, path: str):
        self.path = path
        self._handles: dict[str, object] = {}
        index_path = os.path.join(path, INDEX_FILE)
        single_path = os.path.join(path, SINGLE_FILE)
        if os.path.isfile(index_path):
            index = read_json_file(index_path, error=CheckpointError)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path}: has no 'weight_map' object")
            self._file_of = {name: os.path.join(path, file) for name, file in weight_map.items()}
        elif os.path.isfile(single_path):
            self._handles[single_path] = _open_safetensors(single_path)
            self._file_of = {name: single_path for name in self._handles[single_path].keys()}
        else:
            raise CheckpointError(f"{path}: neither {SINGLE_FILE} nor {INDEX_FILE} found")

    def names(self) -> set[str]:
        return set(self._file_of)

    def _handle(self, name: str):
        file = self._file_of[name]
        if file not in self._handles:
            if not os.path.isfile(file):
                raise CheckpointError(f"{file}: listed in {INDEX_FILE} for {name!r} but missing")
            self._handles[file] = _open_safetensors(file)
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._handle(name)
        if name not in handle.keys():
            raise CheckpointError(f"{self._file_of[name]}: does not contain {name!r} named in the index")
        return tuple(handle.get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The safetensors dtype of `name`, e.g. "BF16", "F32", "I8"."""
        return self._handle(name).get_slice(name).get_dtype()

    def file_of(self, name: str) -> str:
        return self._file_of[name]

    def tensor(self, name: str) -> np.ndarray:
        return self._handle(name).get_tensor(name)


def check_tensors(reader: SafetensorsReader, specs: list[TensorSpec], *,
                  tied: bool) -> None:
    """Raises one CheckpointError listing every missing, unexpected or mis-shaped tensor."""
    expected = {name: spec.hf_shape for spec in specs for name in spec.hf_names}
    present = reader.names()
    # Some tied checkpoints still store lm_head.weight (a copy of the embedding).
    tolerated = {"lm_head.weight"} if tied else set()
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected) - tolerated)
    misshaped, not_float = [], []
    for name in sorted(set(expected) & present):
        shape = reader.shape(name)
        if shape != expected[name]:
            misshaped.append(f"{name}: shape {shape}, expected {expected[name]}")
        if reader.dtype(name) not in FLOAT_DTYPES:
            not_float.append(f"{name} ({reader.dtype(name)} in {reader.file_of(name)})")
    problems = []
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    if misshaped:
        problems.append("mis-shaped tensors: " + "; ".join(misshaped))
    if not_float:
        problems.append("integer or quantised tensors (only float16 / bfloat16 / float32 "
                        "weights load; dequantise first): " + "; ".join(not_float))
    if problems:
        raise CheckpointError(f"{reader.path}: " + " | ".join(problems))


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, layer: jax.Array, index: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(stacked, layer, index, axis=0)


def _place(host: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """Copies one host tensor to its shards; each device receives only its slice."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


def load_params(reader: SafetensorsReader, config: ModelConfig, graph_state: nnx.State,
                mesh: jax.sharding.Mesh, rules: ShardingRules,
                finite: list[tuple[str, jax.Array]] | None = None
                ) -> Iterator[tuple[tuple[str, ...], jax.Array]]:
    """Yields (path, sharded array) for every parameter, streaming tensor by tensor.

    A stacked parameter is built on device one layer at a time, so host memory
    peaks at about one Hugging Face tensor. `finite`, when given, receives
    (HF tensor name, device bool: all values finite in the parameter dtype).
    """
    dtype = jnp.dtype(config.param_dtype)
    flat = dict(nnx.to_flat_state(graph_state))
    for spec in tensor_specs(config):
        variable = flat[spec.ours]
        axes = logical_axes_of(variable)
        sharding = rules.sharding(axes, variable.shape, mesh)
        if not spec.stacked:
            array = _place(spec.to_ours(reader.tensor(spec.hf_names[0])).astype(dtype), sharding)
            if finite is not None:
                finite.append((spec.hf_names[0], _all_finite(array)))
            yield spec.ours, array
            continue
        layer_shape = variable.shape[1:]
        layer_sharding = rules.sharding(axes[1:], layer_shape, mesh)
        stacked = jax.jit(lambda: jnp.zeros(variable.shape, dtype), out_shardings=sharding)()
        for i, name in enumerate(spec.hf_names):
            layer = _place(spec.to_ours(reader.tensor(name)).astype(dtype), layer_sharding)
            if finite is not None:
                finite.append((name, _all_finite(layer)))
            stacked = _set_layer(stacked, layer, jnp.int32(i))
        yield spec.ours, stacked


def dtype_name(value: DTypeLike, argument: str) -> str:
    """'float32' for "float32", jnp.float32 or np.dtype("float32"); ConfigError otherwise."""
    try:
        name = jnp.dtype(value).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ConfigError(f"{argument}={value!r} is not one of {DTYPES} (a name or a jnp dtype)")
    return name


def default_param_dtype(mesh: jax.sharding.Mesh | None) -> str:
    """float32 on CPU (exact parity with transformers' fp32), bfloat16 on GPU / TPU."""
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return "float32" if platform == "cpu" else "bfloat16"


def load_pretrained(path: str, *, param_dtype: DTypeLike | None = None,
                    dtype: DTypeLike | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules: ShardingRules = ShardingRules(),
                    **config_overrides) -> Transformer:
    """Loads a local Hugging Face directory (config.json + safetensors) into a sharded model.

    `param_dtype` is the parameter dtype and `dtype` the compute dtype, as in
    `ModelConfig`: each a name ("bfloat16") or a jnp dtype (jnp.bfloat16). `param_dtype`
    None is float32 on CPU and bfloat16 on GPU / TPU (`default_param_dtype`); `dtype`
    defaults to `param_dtype`. Every tensor's name, shape and dtype (floating point;
    integer or quantised weights are refused) is checked against the config before any
    is loaded; a tensor holding NaN or infinity (after the cast to `param_dtype`) is
    refused by name.
    """
    param_dtype = (dtype_name(param_dtype, "param_dtype") if param_dtype is not None
                   else default_param_dtype(mesh))
    dtype = dtype_name(dtype, "dtype") if dtype is not None else param_dtype
    hf_config = read_hf_config(path)
    if hf_config.get("quantization_config"):
        method = hf_config["quantization_config"].get("quant_method", "?")
        raise CheckpointError(f"{os.path.join(path, CONFIG_FILE)}: a quantised model "
                              f"(quantization_config, {method}); only float16 / bfloat16 / "
                              "float32 weights load, dequantise it first")
    config = ModelConfig.from_hf_config(
        hf_config, source=os.path.join(path, CONFIG_FILE),
        param_dtype=param_dtype, dtype=dtype, **config_overrides)
    reader = SafetensorsReader(path)
    check_tensors(reader, tensor_specs(config), tied=config.tie_word_embeddings)
    mesh = mesh or single_device_mesh()
    graphdef, abstract_state = nnx.split(abstract_model(config, rules))
    flat = dict(nnx.to_flat_state(abstract_state))
    finite: list[tuple[str, jax.Array]] = []
    for path_key, array in load_params(reader, config, abstract_state, mesh, rules, finite):
        flat[path_key] = flat[path_key].replace(array)
    flags = jax.device_get([flag for _, flag in finite])
    bad = [name for (name, _), ok in zip(finite, flags) if not bool(ok)]
    if bad:
        raise CheckpointError(
            f"{path}: tensors holding NaN or infinity (in {config.param_dtype}): "
            + ", ".join(f"{name} ({reader.file_of(name)})" for name in bad))
    state = nnx.from_flat_state(list(flat.items()))
    return nnx.merge(graphdef, state)
