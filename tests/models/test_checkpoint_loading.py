"""load_pretrained: sharded safetensors directories, and tampered ones fail by name."""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from ssrl_jax.models import CheckpointError, ConfigError, load_pretrained, preset  # noqa: E402
from ssrl_jax.sharding import make_mesh  # noqa: E402
from tests.helpers import build_hf_model, padded_batch  # noqa: E402


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    model = build_hf_model("qwen2_bias_tied")
    path = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(path, max_shard_size="20KB")
    ids, mask = padded_batch(128)
    with torch.no_grad():
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits = model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                       position_ids=torch.tensor(positions)).logits.numpy()
    return path, (ids, mask, logits)


def test_sharded_checkpoint_loads_onto_a_mesh(sharded_dir, eight_devices):
    path, (ids, mask, expected) = sharded_dir
    shards = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(shards) > 3 and os.path.exists(path / "model.safetensors.index.json")
    model = load_pretrained(str(path), param_dtype="float32",
                            mesh=make_mesh({"fsdp": 4, "tensor": 2}))
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)
    assert len(model.layers.wq[...].sharding.device_set) == 8


def test_bfloat16_load(sharded_dir):
    path, _ = sharded_dir
    model = load_pretrained(str(path), param_dtype="bfloat16")
    assert model.layers.wq[...].dtype == jnp.bfloat16
    assert model.config.dtype == "bfloat16"


def test_dtype_takes_jnp_dtypes_and_defaults_to_float32_on_cpu(sharded_dir):
    path, (ids, mask, expected) = sharded_dir
    model = load_pretrained(str(path), param_dtype=jnp.float32, dtype=jnp.bfloat16)
    assert model.layers.wq[...].dtype == jnp.float32 and model.config.dtype == "bfloat16"
    default = load_pretrained(str(path))  # CPU: float32, transformers' fp32 logits exactly
    assert default.layers.wq[...].dtype == jnp.float32 and default.config.dtype == "float32"
    got = np.asarray(default(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)
    for bad in (jnp.int8, "float64", "fp32"):
        with pytest.raises(ConfigError, match=r"param_dtype=.* is not one of \('float32'"):
            load_pretrained(str(path), param_dtype=bad)


def test_truncated_or_invalid_json_files_are_named(sharded_dir, tmp_path):
    path, _ = sharded_dir
    shutil.copytree(path, tmp_path / "cut")
    shard = sorted((tmp_path / "cut").glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read the safetensors file .*, {shard}, "):
        load_pretrained(str(tmp_path / "cut"))
    (tmp_path / "cut" / "model.safetensors.index.json").write_bytes(b"{\xff")
    with pytest.raises(CheckpointError, match="not UTF-8 text .*model.safetensors.index.json"):
        load_pretrained(str(tmp_path / "cut"))
    (tmp_path / "cut" / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="invalid JSON .*config.json"):
        load_pretrained(str(tmp_path / "cut"))


def _tamper(src, dst, edit):
    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.k_proj.weight"
    file = dst / index["weight_map"][name]
    tensors = load_file(file)
    edit(tensors, index, name)
    save_file(tensors, file, metadata={"format": "pt"})
    for tensor_name in list(index["weight_map"]):
        if tensor_name not in tensors and index["weight_map"][tensor_name] == file.name:
            del index["weight_map"][tensor_name]
    for tensor_name in tensors:
        index["weight_map"][tensor_name] = file.name
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return name


def _drop(tensors, index, name):
    del tensors[name]


def _reshape(tensors, index, name):
    tensors[name] = np.zeros((3, 64), np.float32)


def _extra(tensors, index, name):
    tensors["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.zeros((8,), np.float32)


def _int8(tensors, index, name):
    tensors[name] = np.ones(tensors[name].shape, np.int8)


def _nan(tensors, index, name):
    tensors[name] = tensors[name].copy()
    tensors[name][2, 3] = np.nan


def _too_large_for_float16(tensors, index, name):
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] = 1e6  # finite in float32, infinite in float16


@pytest.mark.parametrize("edit, message", [
    (_drop, "missing tensors: model.layers.1.self_attn.k_proj.weight"),
    (_int8, r"integer or quantised tensors .*: model.layers.1.self_attn.k_proj.weight \(I8 in "
            r".*model-\d+-of-\d+.safetensors\)"),
    (_nan, r"NaN or infinity \(in float32\): model.layers.1.self_attn.k_proj.weight \(.*"
           r"model-\d+-of-\d+.safetensors\)"),
    (_reshape, r"mis-shaped tensors: model.layers.1.self_attn.k_proj.weight: shape \(3, 64\)"),
    (_extra, "unexpected tensors: model.layers.1.self_attn.rotary_emb.inv_freq"),
])
def test_tampered_checkpoint_names_the_tensor(sharded_dir, tmp_path, edit, message):
    path, _ = sharded_dir
    _tamper(path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(str(tmp_path / "bad"), param_dtype="float32")


def test_a_tensor_overflowing_the_load_dtype_is_named(sharded_dir, tmp_path):
    path, _ = sharded_dir
    _tamper(path, tmp_path / "bad", _too_large_for_float16)
    load_pretrained(str(tmp_path / "bad"), param_dtype="float32")
    with pytest.raises(CheckpointError, match=r"\(in float16\): model.layers.1.self_attn.k_proj"):
        load_pretrained(str(tmp_path / "bad"), param_dtype="float16")


def test_quantised_model_config_is_refused(sharded_dir, tmp_path):
    path, _ = sharded_dir
    shutil.copytree(path, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: a quantised model .*bitsandbytes"):
        load_pretrained(str(tmp_path / "q"), param_dtype="float32")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json: required field"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(preset("Qwen3-0.6B").to_hf_config()))
    with pytest.raises(CheckpointError, match="neither model.safetensors nor"):
        load_pretrained(str(tmp_path))
