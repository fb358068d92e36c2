"""Model configuration for the Llama 3.x, Qwen2/2.5 and Qwen3 decoder family.

One dataclass describes all three families: the differences between them are
fields (attention bias, q/k norm, explicit head_dim, tied embeddings, llama3 rope
scaling), never subclasses. `from_hf_config` / `to_hf_config` translate to and
from Hugging Face `config.json` dictionaries.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ssrl_jax.cli_errors import UserError

FAMILIES = ("llama", "qwen2", "qwen3")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
# Attention of whole sequences (training forward, scoring): einsum (exact, [T, T] scores in
# memory) or splash (JAX's Pallas TPU kernel, blockwise; interpreted off TPU). models/splash.py.
ATTENTION_IMPLS = ("einsum", "splash")
# Attention of a decode step over the KV cache: einsum over the KV window (every backend), or
# paged (JAX's Pallas TPU paged attention kernel over each row's own filled slots, for bf16
# caches with head_dim a multiple of 128; interpreted off TPU). models/paged.py.
DECODE_ATTENTION_IMPLS = ("einsum", "paged")
DTYPES = ("float32", "bfloat16", "float16")
# The KV cache's storage: "" the compute dtype; "int8" one byte a value plus an fp32 scale per
# slot and KV head (half the bytes of bf16 to hold and to read at every decode step).
KV_CACHE_DTYPES = ("", "int8")
_LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


class ConfigError(UserError, ValueError):
    """A model configuration names an unsupported family or field value."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, math options and run-time choices of one decoder.

    The first block of fields mirrors Hugging Face `config.json`; the last block
    (dtypes, rematerialisation) is ours and is never written to `config.json`.
    """

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Ours, not Hugging Face's:
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    attention: str = "einsum"
    kv_cache_dtype: str = ""
    decode_attention: str = "einsum"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} is not supported; expected one of {FAMILIES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"attention={self.attention!r} is not one of {ATTENTION_IMPLS}")
        if self.decode_attention not in DECODE_ATTENTION_IMPLS:
            raise ConfigError(f"decode_attention={self.decode_attention!r} is not one of "
                              f"{DECODE_ATTENTION_IMPLS}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(f"kv_cache_dtype={self.kv_cache_dtype!r} is not one of "
                              f"{KV_CACHE_DTYPES}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def kv_quantized(self) -> bool:
        return self.kv_cache_dtype == "int8"

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @property
    def architecture(self) -> str:
        return _ARCHITECTURES[self.family]

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = d * q + 2 * d * kv + q * d
        if self.attention_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * layer + d + head

    # ----------------------------------------------------------------- HF ----

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], *, source: str = "config.json",
                       **overrides: Any) -> "ModelConfig":
        """Builds a config from a Hugging Face `config.json` dictionary.

        Accepts both the `rope_theta` + `rope_scaling` layout of published
        checkpoints and the `rope_parameters` layout of transformers >= 5.
        `overrides` set our own fields (dtypes, remat) or replace HF ones;
        `source` names the file in error messages.
        """
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type={model_type!r} is not supported; expected one of {FAMILIES}")
        _reject_unsupported(hf, model_type, source)
        heads = _require(hf, source, "num_attention_heads")
        hidden = _require(hf, source, "hidden_size")
        rope_theta, rope_scaling = _parse_rope(hf, source)
        fields = dict(
            family=model_type,
            vocab_size=_require(hf, source, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_require(hf, source, "intermediate_size"),
            num_layers=_require(hf, source, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hidden // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6 if model_type != "llama" else 1e-5),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 8192),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type != "llama")),
            # Qwen2 always has q/k/v biases; Llama and Qwen3 read the flag.
            attention_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` dictionary that `transformers` loads as this model."""
        hf: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": (
                None if self.rope_scaling is None
                else {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                             else self.eos_token_id),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.family == "llama":
            hf.update(attention_bias=self.attention_bias, mlp_bias=False, pretraining_tp=1)
        else:
            hf.update(use_sliding_window=False, sliding_window=None,
                      max_window_layers=self.num_layers)
        if self.family == "qwen3":
            hf["attention_bias"] = self.attention_bias
        return hf


def _require(hf: Mapping[str, Any], source: str, key: str) -> Any:
    if key not in hf:
        raise ConfigError(f"{source}: required field {key!r} is missing")
    return hf[key]


def _reject_unsupported(hf: Mapping[str, Any], model_type: str, source: str) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: hidden_act={act!r} is not supported; expected 'silu'")
    if hf.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=True is not supported")
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=True is not supported")
    if hf.get("pretraining_tp", 1) != 1:
        raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported; expected 1")
    if model_type == "qwen2" and hf.get("attention_bias") is False:
        raise ConfigError(f"{source}: Qwen2 without q/k/v bias (attention_bias=False) is not supported")


def _parse_rope(hf: Mapping[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise ConfigError(
            f"{source}: rope_scaling.rope_type={rope_type!r} is not supported; "
            "expected 'default' or 'llama3'")
    missing = [k for k in _LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ConfigError(f"{source}: rope_scaling of type 'llama3' lacks {missing}")
    return float(theta), RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )
