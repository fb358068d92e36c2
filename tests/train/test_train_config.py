"""Training configs: every shipped config validates; bad fields are named in the error."""

import importlib.util
import pathlib

import pytest

from ssrl_jax import train_config as tc

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
TRAIN_CONFIGS = ["tiny", "smoke", "toyworld", "llama3b", "llama8b", "qwen2_5_7b", "qwen3_8b", "search_r1"]


def load(name):
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_shipped_configs_validate(name):
    tc.validate(load(name))


def test_paper_configs_carry_the_spec_settings():
    c = load("llama8b")
    assert (c.batch_size, c.rollout.group_size, c.optim.learning_rate) == (256, 5, 1e-6)
    assert (c.data.max_prompt_tokens, c.rollout.max_new_tokens, c.num_epochs) == (1024, 4096, 5)
    assert (c.grpo.kl_coef, c.grpo.kl_estimator, c.grpo.aggregation) == (
        0.001, "low_var_kl", "token-mean")
    assert c.optim.warmup_ratio == 0.02 and c.optim.max_grad_norm == 1.0
    assert c.mesh.fsdp * c.mesh.tensor * c.mesh.data == 64


@pytest.mark.parametrize("field, value, expected", [
    ("rollout.top_p", 1.5, "config.rollout.top_p=1.5 is not allowed: expected a number > 0.0"),
    ("grpo.kl_estimator", "k4", "expected one of ('k1', 'k2', 'k3', 'low_var_kl')"),
    ("model.param_dtype", "fp8", "config.model.param_dtype='fp8'"),
    ("batch_size", 0, "config.batch_size=0 is not allowed: expected an integer >= 1"),
    ("data.weights", "nq:1", "config.data.weights='nq:1'"),
    ("mesh.tensor", 0, "config.mesh.tensor=0"),
    ("data.chat", "yes", "expected one of ('auto', 'true', 'false')"),
    ("grpo.dual_clip", 0.5, "0 (off) or a number > 1"),
    ("optim.schedule", "linear", "expected one of ('constant', 'cosine')"),
    ("log.num_samples", -1, "config.log.num_samples=-1 is not allowed: expected an integer >= 0"),
])
def test_bad_field_is_named(field, value, expected):
    c = load("smoke")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(tc.ConfigFieldError) as error:
        tc.validate(c)
    assert expected in str(error.value)


def test_cross_field_rules():
    c = load("smoke")
    c.grpo.num_mini_batches = 3  # 4 prompts × 4 samples = 16 responses
    with pytest.raises(tc.ConfigFieldError, match="num_mini_batches=3 must divide"):
        tc.validate(c)
    c = load("smoke")
    c.mesh.update(fsdp=-1, data=-1)
    with pytest.raises(tc.ConfigFieldError, match="at most one axis may be -1"):
        tc.validate(c)
    c = load("smoke")
    c.model.tokenizer = ""
    with pytest.raises(tc.ConfigFieldError, match="config.model.tokenizer: needed"):
        tc.validate(c)


def test_parse_weights():
    assert tc.parse_weights("nq=1, hotpotqa=0.5") == {"nq": 1.0, "hotpotqa": 0.5}
    assert tc.parse_weights("") == {}
    for bad in ("nq", "=1", "nq=x", "nq=-1"):
        with pytest.raises(ValueError):
            tc.parse_weights(bad)


@pytest.mark.parametrize("name", ["llama3b", "llama8b", "qwen2_5_7b", "qwen3_8b", "search_r1"])
def test_accelerator_configs_keep_fp32_masters_and_compute_in_bf16(name):
    c = load(name)
    assert (c.model.param_dtype, c.model.dtype) == ("float32", "bfloat16")
    assert (tc.default_config().model.param_dtype, tc.default_config().model.dtype) == (
        "float32", "bfloat16")


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_max_log_ratio_must_be_finite_and_positive(value):
    c = load("smoke")
    assert c.grpo.max_log_ratio == 20.0
    c.grpo.max_log_ratio = value
    with pytest.raises(tc.ConfigFieldError,
                       match="config.grpo.max_log_ratio=.*a finite number > 0"):
        tc.validate(c)
