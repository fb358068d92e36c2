"""ModelConfig: HF config.json round trip, presets' real shapes, clear errors."""

import pytest

from ssrl_jax.models import HF_CONFIGS, ConfigError, ModelConfig, preset

# Published parameter counts (billions) of the presets, from their model cards.
PUBLISHED_BILLIONS = {
    "Llama-3.2-1B": 1.24, "Llama-3.2-3B": 3.21, "Llama-3.1-8B": 8.03, "Llama-3.1-70B": 70.6,
    "Qwen2.5-0.5B": 0.49, "Qwen2.5-1.5B": 1.54, "Qwen2.5-3B": 3.09, "Qwen2.5-7B": 7.62,
    "Qwen3-0.6B": 0.60, "Qwen3-1.7B": 1.72, "Qwen3-4B": 4.02, "Qwen3-8B": 8.19,
    "Qwen3-14B": 14.8, "Qwen3-32B": 32.8,
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_config_round_trip(name):
    hf = HF_CONFIGS[name]
    config = ModelConfig.from_hf_config(hf)
    out = config.to_hf_config()
    for key, value in hf.items():
        assert out[key] == value, (name, key)
    assert ModelConfig.from_hf_config(out) == config


@pytest.mark.parametrize("name", sorted(PUBLISHED_BILLIONS))
def test_preset_parameter_counts_match_published(name):
    billions = preset(name).num_params() / 1e9
    assert billions == pytest.approx(PUBLISHED_BILLIONS[name], rel=0.01)


def test_family_specific_fields():
    assert preset("Qwen2.5-7B").attention_bias and not preset("Qwen2.5-7B").qk_norm
    assert preset("Qwen3-8B").qk_norm and not preset("Qwen3-8B").attention_bias
    assert preset("Qwen3-0.6B").head_dim == 128 != 1024 // 16
    assert preset("Llama-3.1-8B").rope_scaling.factor == 8.0
    assert preset("Llama-3.2-1B").tie_word_embeddings
    assert preset("Llama-3.1-8B-Instruct").eos_token_ids == (128001, 128008, 128009)


def test_transformers5_rope_parameters_layout_is_read():
    hf = dict(HF_CONFIGS["Llama-3.1-8B"])
    scaling = hf.pop("rope_scaling")
    hf["rope_parameters"] = {**scaling, "rope_theta": hf.pop("rope_theta")}
    assert ModelConfig.from_hf_config(hf) == preset("Llama-3.1-8B")


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"num_key_value_heads": 5}, "num_kv_heads=5"),
])
def test_unsupported_values_are_named(change, message):
    hf = {**HF_CONFIGS["Llama-3.1-8B"], **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ModelConfig.from_hf_config(hf)


def test_missing_required_field_is_named():
    hf = dict(HF_CONFIGS["Qwen3-8B"])
    del hf["hidden_size"]
    with pytest.raises(ConfigError, match="'hidden_size' is missing"):
        ModelConfig.from_hf_config(hf)


def test_our_fields_are_validated():
    with pytest.raises(ConfigError, match="remat='sometimes'"):
        preset("Qwen3-0.6B", remat="sometimes")
    with pytest.raises(ConfigError, match="param_dtype='int8'"):
        preset("Qwen3-0.6B", param_dtype="int8")
    with pytest.raises(ConfigError, match="decode_attention='ragged'"):
        preset("Qwen3-0.6B", decode_attention="ragged")
