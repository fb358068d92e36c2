"""`python -m ssrl_jax.convert`: HF -> Orbax -> HF bit-exact, a sharded run's checkpoint to
transformers with our logits, and errors that name the flag and path."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from ssrl_jax import checkpoints
from ssrl_jax.convert import main, parse_size
from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
from ssrl_jax.models import ModelConfig, RopeScaling, abstract_model
from ssrl_jax.models.init import state_shardings
from ssrl_jax.sharding import ShardingRules, make_mesh
from tests.helpers import TINY_HF_CONFIGS, build_hf_model, padded_batch, user_error
from tests.helpers_checkpoint_faults import flip_byte, params_data_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENIZER = quickstart_tokenizer_path()  # vocab 1024: bos 0, eos <|eot_id|> 4, pad 5
# Llama 3 with rope scaling, untied; config eos <|end_of_text|> 1, the tokenizer's is 4.
CONFIG = ModelConfig(family="llama", vocab_size=1024, hidden_size=64, intermediate_size=96,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32),
                     max_position_embeddings=256, bos_token_id=0, eos_token_id=1)


def random_model(config, mesh, seed):
    """A model with random weights (norms near 1) placed in shards on `mesh`."""
    rules = ShardingRules()
    graphdef, state = nnx.split(abstract_model(config, rules))
    shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        value = rng.normal(0.0, 0.1, x.shape) + ("norm" in path[-1].key)
        sharding = shardings
        for entry in path:
            sharding = sharding[entry.key]
        return jax.device_put(value.astype(x.dtype), sharding)

    nnx.replace_by_pure_dict(state, jax.tree.map_with_path(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def safetensors_of(directory):
    """{name: array} over every shard of a Hugging Face directory."""
    tensors = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="numpy") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


@pytest.fixture(scope="module")
def trained(eight_devices, tmp_path_factory):
    """(model on an fsdp4 x tensor2 mesh, workdir) as a training run leaves them."""
    model = random_model(CONFIG, make_mesh({"fsdp": 4, "tensor": 2}), seed=0)
    assert any(len(x.sharding.device_set) == 8
               for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    workdir = tmp_path_factory.mktemp("run")
    shutil.copytree(TOKENIZER, workdir / "tokenizer")
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
    meta = {"model": checkpoints.model_meta(CONFIG), "tokenizer": str(workdir / "tokenizer")}
    checkpoints.save(manager, 7, params=nnx.state(model, nnx.Param), meta=meta)
    manager.wait_until_finished()
    return model, workdir


@pytest.mark.parametrize("name", sorted(TINY_HF_CONFIGS))
def test_hf_to_orbax_to_hf_is_bit_exact(name, tmp_path, capsys):
    source = tmp_path / "source"
    build_hf_model(name, seed=1).save_pretrained(source, max_shard_size="20KB")
    for file in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, file), source)

    main(["hf-to-orbax", "--hf", str(source), "--out", str(tmp_path / "work")])
    _, meta = checkpoints.read_meta(tmp_path / "work")
    assert meta["tokenizer"] == str(tmp_path / "work" / "tokenizer")
    main(["orbax-to-hf", "--checkpoint", str(tmp_path / "work"), "--out", str(tmp_path / "hf"),
          "--dtype", "float32", "--max-shard-size", "20KB"])
    assert "model.safetensors.index.json" in capsys.readouterr().out

    expected, got = safetensors_of(source), safetensors_of(tmp_path / "hf")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype == np.float32, key
        np.testing.assert_array_equal(got[key].view(np.uint32), value.view(np.uint32), key)
    original = json.loads((source / "config.json").read_text())
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key in ("architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"):
        assert exported[key] == original[key], key
    assert ModelConfig.from_hf_config(exported) == ModelConfig.from_hf_config(original)
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(
        os.listdir(tmp_path / "hf"))


def test_sharded_run_checkpoint_loads_in_transformers_with_our_logits(trained, tmp_path):
    model, workdir = trained
    out = tmp_path / "hf"
    main(["orbax-to-hf", "--checkpoint", str(workdir), "--out", str(out), "--dtype", "float32"])

    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert hf.generation_config.eos_token_id == [1, 4]
    # transformers 5 saved it as TokenizersBackend, a class transformers 4 (vLLM) lacks.
    assert json.loads((out / "tokenizer_config.json").read_text())[
        "tokenizer_class"] == "PreTrainedTokenizerFast"
    ids, mask = padded_batch(CONFIG.vocab_size)
    ids, mask = ids[[0, 2, 3]], mask[[0, 2, 3]]  # left-padded and full rows
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                      position_ids=torch.tensor(positions)).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote Hamlet?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    output = hf.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_checkpoint_tokenizer_is_found_beside_a_moved_workdir(trained, tmp_path, capsys):
    _, workdir = trained
    moved = tmp_path / "moved"
    shutil.copytree(workdir, moved)  # meta still names the old tokenizer path
    shutil.rmtree(workdir / "tokenizer")
    try:
        main(["orbax-to-hf", "--checkpoint", str(moved / "checkpoints" / "7"),
              "--out", str(tmp_path / "hf"), "--max-shard-size", "1GB"])
    finally:
        shutil.copytree(moved / "tokenizer", workdir / "tokenizer")
    assert "exported step 7" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "hf" / "tokenizer.json")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_errors_name_the_flag_and_the_path(trained, tmp_path, capsys):
    model, workdir = trained

    def error(*argv):  # exit 2 with one `error: ...` line, no traceback
        return user_error(capsys, main, list(argv))

    hf = str(tmp_path / "hf")
    assert re.search(f"--checkpoint .*{tmp_path / 'absent'}",
                     error("orbax-to-hf", "--checkpoint", str(tmp_path / "absent"), "--out", hf))
    (tmp_path / "empty").mkdir()
    assert "no complete checkpoint" in error("orbax-to-hf", "--checkpoint",
                                             str(tmp_path / "empty"), "--out", hf)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert f"--out {tmp_path / 'full'}: holds entries that are not" in error(
        "orbax-to-hf", "--checkpoint", str(workdir), "--out", str(tmp_path / "full"))

    no_tokenizer = tmp_path / "run"
    checkpoints.write_params_checkpoint(checkpoints.checkpoint_dir(no_tokenizer),
                                        nnx.state(model, nnx.Param), CONFIG,
                                        extra_meta={"tokenizer": None})
    assert re.search("no tokenizer.*--tokenizer DIR or --no-tokenizer",
                     error("orbax-to-hf", "--checkpoint", str(no_tokenizer), "--out", hf))
    assert f"--tokenizer {tmp_path}: no tokenizer files" in error(
        "orbax-to-hf", "--checkpoint", str(no_tokenizer), "--out", hf, "--tokenizer",
        str(tmp_path))
    main(["orbax-to-hf", "--checkpoint", str(no_tokenizer), "--out", hf, "--no-tokenizer"])
    assert not os.path.exists(tmp_path / "hf" / "tokenizer.json")

    assert re.search("--hf .*: not a Hugging Face model directory",
                     error("hf-to-orbax", "--hf", str(tmp_path / "empty"), "--out",
                           str(tmp_path / "w")))
    assert re.search("--out .*: exists and is not an empty directory",
                     error("hf-to-orbax", "--hf", hf, "--out", str(tmp_path / "full")))
    assert re.search("--hf .*: no tokenizer files",
                     error("hf-to-orbax", "--hf", hf, "--out", str(tmp_path / "w")))
    assert "invalid choice: 'bogus'" in error("bogus")


def test_overwrite_never_deletes_the_checkpoint_a_workdir_or_foreign_files(trained, tmp_path,
                                                                           capsys):
    _, source = trained
    workdir = tmp_path / "runs" / "grpo"
    shutil.copytree(source, workdir)
    before = sorted(str(p) for p in workdir.rglob("*"))

    def argv(out, checkpoint=workdir):
        return ["orbax-to-hf", "--checkpoint", str(checkpoint), "--out", str(out), "--overwrite"]

    def refused(out):
        return user_error(capsys, main, argv(out))

    for out in (workdir, tmp_path / "runs", tmp_path):
        assert f"--out {out}: contains the input --checkpoint" in refused(out)
    assert f"--out {workdir / 'tokenizer'}: lies inside the input" in refused(workdir / "tokenizer")
    assert sorted(str(p) for p in workdir.rglob("*")) == before

    other_run = tmp_path / "other"
    shutil.copytree(source, other_run)
    assert "holds a training workdir or checkpoints" in refused(other_run)
    assert (other_run / "checkpoints" / "7").is_dir()

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert "holds entries that are not files of a Hugging Face export (todo.txt)" in refused(notes)
    assert (notes / "todo.txt").read_text() == "mine"

    out = tmp_path / "hf"
    main(argv(out))
    main(argv(out))  # an export replaces an earlier export
    assert (out / "config.json").is_file()


def test_corrupt_latest_step_exports_the_previous_one(trained, tmp_path, capsys, caplog):
    model, source = trained
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
    checkpoints.save(manager, 8, params=nnx.state(model, nnx.Param),
                     meta={"model": checkpoints.model_meta(CONFIG),
                           "tokenizer": str(workdir / "tokenizer")})
    manager.wait_until_finished()
    flip_byte(params_data_file(workdir / "checkpoints" / "8"))
    with caplog.at_level("WARNING"):
        main(["orbax-to-hf", "--checkpoint", str(workdir), "--out", str(tmp_path / "hf")])
    assert "exported step 7 of" in capsys.readouterr().out
    assert "checkpoint step 8 is unreadable (CorruptCheckpointError" in caplog.text
    error = user_error(capsys, main, ["orbax-to-hf", "--checkpoint",
                                      str(workdir / "checkpoints" / "8"),
                                      "--out", str(tmp_path / "hf8")])
    assert "checksum mismatch" in error or "NaN or infinity" in error


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("20KB") == 20_000
    assert parse_size("1.5MiB") == 3 * 2**19 and parse_size("123") == 123
    with pytest.raises(Exception, match="not a size"):
        parse_size("5 parsecs")
