"""export_hf: bf16 bit-exact in transformers, shard limits, streaming, safe directory writes."""

import json
import os
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from ssrl_jax.models import ModelConfig, abstract_model, export
from ssrl_jax.models.init import state_shardings
from ssrl_jax.models.hf import INDEX_FILE, SINGLE_FILE, tensor_specs
from ssrl_jax.safe_paths import UnsafeOverwriteError
from ssrl_jax.sharding import ShardingRules, make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Qwen2 with biases and tied embeddings; the MLP dominates so that shards can be small.
CONFIG = ModelConfig(family="qwen2", vocab_size=256, hidden_size=64, intermediate_size=512,
                     num_layers=6, num_heads=4, num_kv_heads=2, head_dim=16, attention_bias=True,
                     tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=0,
                     eos_token_id=(1, 2))


def random_model(config, mesh, seed):
    """A model with random weights (norms near 1, non-zero biases) placed in shards on `mesh`.

    Drawn on the host and put in place: cheaper than compiling an initialiser.
    """
    rules = ShardingRules()
    graphdef, state = nnx.split(abstract_model(config, rules))
    shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        value = rng.normal(0.0, 0.1, x.shape) + ("norm" in path[-1].key)
        return jax.device_put(value.astype(x.dtype), sharding_at(shardings, path))

    nnx.replace_by_pure_dict(state, jax.tree.map_with_path(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def sharding_at(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree


@pytest.fixture(scope="module")
def model(eight_devices):
    return random_model(CONFIG, make_mesh({"fsdp": 4, "tensor": 2}), seed=1)


def shard_tensors(directory):
    """{file: {name: array}} of every safetensors file in `directory`."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="numpy") as f:
                out[name] = {k: f.get_tensor(k) for k in f.keys()}
    return out


def test_bf16_export_loads_in_transformers_bit_exact(model, tmp_path):
    summary = export.export_hf(model, CONFIG, tmp_path / "hf", dtype="bfloat16")
    assert summary.num_shards == 1 and SINGLE_FILE in summary.files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 2] and generation["bos_token_id"] == 0

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")  # dtype "auto"
    assert hf.dtype == torch.bfloat16
    hf_state = hf.state_dict()
    params = export.flat_params(model)
    for spec in tensor_specs(CONFIG):
        ours = params[spec.ours].astype(jnp.bfloat16)
        for i, name in enumerate(spec.hf_names):
            expected = spec.to_hf(np.asarray(ours[i] if spec.stacked else ours))
            got = hf_state[name].view(torch.int16).numpy()
            np.testing.assert_array_equal(got, expected.view(np.int16), err_msg=name)


def test_shards_respect_the_limit_and_the_index_lists_every_tensor(model, tmp_path):
    # The 64 KB embedding (bf16) is larger than the limit: it gets a shard of its own.
    limit = 40_000
    summary = export.export_hf(model, CONFIG, tmp_path / "hf", max_shard_bytes=limit)
    shards = shard_tensors(tmp_path / "hf")
    assert summary.num_shards == len(shards) > 4
    assert sorted(shards) == [f"model-{k:05d}-of-{len(shards):05d}.safetensors"
                              for k in range(1, len(shards) + 1)]
    for name, tensors in shards.items():
        size = sum(t.nbytes for t in tensors.values())
        assert size <= limit or len(tensors) == 1, (name, size)
    assert any(sum(t.nbytes for t in ts.values()) > limit for ts in shards.values())
    index = json.loads((tmp_path / "hf" / INDEX_FILE).read_text())
    assert index["weight_map"] == {k: file for file, ts in shards.items() for k in ts}
    assert index["metadata"]["total_size"] == summary.total_bytes == sum(
        t.nbytes for ts in shards.values() for t in ts.values())
    assert set(index["weight_map"]) == {n for s in tensor_specs(CONFIG) for n in s.hf_names}


def test_host_memory_stays_about_one_shard(model, tmp_path):
    limit = 300_000
    largest = max(t.nbytes for t in export.hf_tensors(CONFIG, "float32"))
    export.export_hf(model, CONFIG, tmp_path / "warm", dtype="float32", max_shard_bytes=limit)
    tracemalloc.start()
    try:
        summary = export.export_hf(model, CONFIG, tmp_path / "hf", dtype="float32",
                                   max_shard_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.total_bytes > 8 * limit and summary.num_shards > 8
    # The shard buffer, safetensors' copy of it while writing, and the tensor in flight.
    assert peak < 2 * limit + 2 * largest, peak


def test_refuses_a_non_empty_directory_and_replaces_only_an_export_when_asked(model, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    for overwrite in (False, True):  # a file an export does not write is never deleted
        with pytest.raises(UnsafeOverwriteError, match=f"{out}: holds entries .*keep.txt"):
            export.export_hf(model, CONFIG, out, overwrite=overwrite)
    assert os.listdir(out) == ["keep.txt"]
    (out / "keep.txt").unlink()
    export.export_hf(model, CONFIG, out, dtype="float32")
    with pytest.raises(FileExistsError, match=str(out)):
        export.export_hf(model, CONFIG, out)
    export.export_hf(model, CONFIG, out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no staging or old copies left


def test_a_failed_export_leaves_nothing_behind(model, tmp_path, monkeypatch):
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        open(path, "wb").close()

    monkeypatch.setattr(export.safetensors.numpy, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export.export_hf(model, CONFIG, tmp_path / "hf", max_shard_bytes=40_000)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_mismatched_params_are_named_before_anything_is_written(model, tmp_path):
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    del params["final_norm"]
    with pytest.raises(ValueError, match="final_norm: missing"):
        export.export_hf(params, CONFIG.replace(num_layers=5), tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_generation_config_merges_eos_from_base_config_and_tokenizer():
    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    tokenizer = quickstart_tokenizer_path()  # bos <|begin_of_text|>=0, eos <|eot_id|>=4, pad=5
    assert export.tokenizer_special_ids(tokenizer) == {
        "bos_token_id": 0, "eos_token_id": 4, "pad_token_id": 5}
    config = CONFIG.replace(eos_token_id=1, bos_token_id=None)
    got = export.generation_config_for(
        config, base={"eos_token_id": [7, 1], "temperature": 0.7, "_from_model_config": True},
        tokenizer_dir=tokenizer)
    assert got == {"eos_token_id": [7, 1, 4], "bos_token_id": 0, "pad_token_id": 5,
                   "temperature": 0.7}
    assert export.generation_config_for(config)["eos_token_id"] == 1


def test_tokenizer_config_is_rewritten_for_transformers_4_and_still_loads_in_5(tmp_path):
    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(quickstart_tokenizer_path())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.save_pretrained(tmp_path / "saved")  # transformers 5: a list, TokenizersBackend
    export.copy_tokenizer_files(tmp_path / "saved", tmp_path / "copy")
    config = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in config  # a dict of named tokens to transformers 4
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    copied = transformers.AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert copied.extra_special_tokens == ["<|im_start|>", "<|im_end|>"]
    text = "<|im_start|>user hi<|im_end|>"
    assert copied.encode(text) == tokenizer.encode(text)
    # Named extra tokens (a dict) are what transformers 4 expects: kept as they are.
    named = json.dumps({"extra_special_tokens": {"image_token": "<img>"}}).encode()
    assert export.portable_tokenizer_config(named, fast=True) == named
