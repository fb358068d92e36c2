"""The decoder family (Llama 3.x, Qwen2/2.5, Qwen3), its configs and HF loading."""

from ssrl_jax.models.config import ConfigError, ModelConfig, RopeScaling
from ssrl_jax.models.hf import CheckpointError, load_pretrained, read_hf_config
from ssrl_jax.models.init import abstract_model, init_model
from ssrl_jax.models.presets import HF_CONFIGS, preset
from ssrl_jax.models.transformer import KVCache, QuantizedKV, Transformer

__all__ = [
    "CheckpointError", "ConfigError", "HF_CONFIGS", "KVCache", "ModelConfig", "QuantizedKV",
    "RopeScaling", "Transformer", "abstract_model", "init_model", "load_pretrained", "preset",
    "read_hf_config",
]
