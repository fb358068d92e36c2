"""The training loop: outputs in the workdir, exact resume, SIGTERM, CLI errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from ssrl_jax import checkpoints, trainer
from ssrl_jax.run_log import METRICS_FILE, SAMPLES_FILE, TENSORBOARD_DIR
from ssrl_jax.train_config import default_config
from tests.xla_flags import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Compared between an uninterrupted and a resumed run (timings excluded).
COMPARED = ("reward", "exact_match", "format_score", "loss", "kl", "entropy", "grad_norm",
            "response_length", "trained_tokens")


def small_config(train_file, total_steps=4):
    """A tiny random model on `train_file` (the `short_qa` fixture: short prompts)."""
    c = default_config()
    c.total_steps = total_steps
    c.batch_size = 2
    c.model.tokenizer = "quickstart"
    c.model.update(param_dtype="float32", dtype="float32", remat="none")
    c.model.random.update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                          num_kv_heads=1, head_dim=16)
    c.data.update(train_files=str(train_file), chat="false")
    c.rollout.update(group_size=2, max_new_tokens=8)
    c.optim.update(learning_rate=1e-2, warmup_ratio=0.25)
    c.checkpoint.update(every_steps=2, async_save=True)
    c.log.update(samples_every_steps=2, num_samples=2)
    return c


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, short_qa):
    full = trainer.run(small_config(short_qa), str(tmp_path / "full"))
    assert (full.start_step, full.last_step, full.preempted) == (0, 4, False)

    first = trainer.run(small_config(short_qa), str(tmp_path / "split"), stop_after=2)
    assert first.last_step == 2
    second = trainer.run(small_config(short_qa), str(tmp_path / "split"))
    assert (second.start_step, second.last_step) == (2, 4)

    expected = {r["step"]: r for r in read_jsonl(tmp_path / "full" / METRICS_FILE)}
    resumed = {r["step"]: r for r in read_jsonl(tmp_path / "split" / METRICS_FILE)}
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        for name in COMPARED:
            assert resumed[step][name] == expected[step][name], (step, name)

    # The workdir holds everything the issue lists.
    workdir = tmp_path / "full"
    samples = read_jsonl(workdir / SAMPLES_FILE)
    assert [s["step"] for s in samples] == [2, 2, 4, 4]
    assert all("Question:" in s["prompt"] and isinstance(s["response"], str) for s in samples)
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / TENSORBOARD_DIR).iterdir())
    step, meta = checkpoints.read_meta(workdir)
    assert step == 4 and meta["seed"] == 0 and meta["data_iterator"]
    model, _ = checkpoints.load_model(workdir)
    assert model.config.vocab_size == 1024
    _exported_model_matches(model, workdir, tmp_path / "hf")


@pytest.mark.slow
def test_mixed_precision_run_resumes_exactly_with_fp32_masters(tmp_path, short_qa):
    """The default precision (fp32 masters and Adam state, bf16 compute, rollout and
    reference): checkpoints hold fp32 weights and a resumed run repeats step 3 exactly."""
    import jax
    import numpy as np
    from flax import nnx

    def config():
        c = small_config(short_qa, total_steps=3)
        c.model.update(param_dtype="float32", dtype="bfloat16")
        return c

    trainer.run(config(), str(tmp_path / "full"))
    trainer.run(config(), str(tmp_path / "split"), stop_after=2)
    resumed = trainer.run(config(), str(tmp_path / "split"))
    assert 1 <= resumed.start_step <= 2 and resumed.last_step == 3
    expected = {r["step"]: r for r in read_jsonl(tmp_path / "full" / METRICS_FILE)}
    got = {r["step"]: r for r in read_jsonl(tmp_path / "split" / METRICS_FILE)}
    for step in range(resumed.start_step + 1, 4):
        for name in COMPARED:
            assert got[step][name] == expected[step][name], (step, name)
    model, meta = checkpoints.load_model(tmp_path / "full")
    assert (meta["model"]["param_dtype"], meta["model"]["dtype"]) == ("float32", "bfloat16")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert params and all(np.asarray(x).dtype == np.float32 for x in params)


def _exported_model_matches(model, workdir, out):
    """The trained checkpoint, exported with `convert orbax-to-hf`, loads in transformers
    with the logits of our model (fp32, left-padded rows)."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from ssrl_jax.convert import main as convert

    convert(["orbax-to-hf", "--checkpoint", str(workdir), "--out", str(out),
             "--dtype", "float32"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    rows = [tokenizer("Question: who wrote Hamlet?")["input_ids"], tokenizer("<search>")["input_ids"]]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)),
                      position_ids=torch.tensor(positions)).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_bad_model_path_names_the_field(tmp_path, short_qa):
    c = small_config(short_qa)
    c.model.path = str(tmp_path / "no_such_model")
    with pytest.raises(Exception, match="no_such_model"):
        trainer.run(c, str(tmp_path / "run"))


def _train_command(workdir, *overrides):
    return [sys.executable, "-m", "ssrl_jax.train", "--config", str(ROOT / "configs" / "smoke.py"),
            "--workdir", str(workdir), *overrides]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "XLA_FLAGS": xla_flags()}


def test_cli_rejects_a_bad_override_naming_the_field(tmp_path):
    result = subprocess.run(_train_command(tmp_path, "--config.rollout.top_p=1.5"),
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode != 0
    assert "config.rollout.top_p=1.5 is not allowed" in result.stderr


@pytest.mark.slow
def test_sigterm_saves_the_last_step_and_exits_cleanly(tmp_path, short_qa):
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        _train_command(workdir, "--config.total_steps=500", "--config.checkpoint.every_steps=1000",
                       "--config.rollout.max_new_tokens=8", f"--config.data.train_files={short_qa}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    metrics = workdir / METRICS_FILE
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "preempted: saved step" in output
    last = len(read_jsonl(metrics))
    step, meta = checkpoints.read_meta(workdir)
    assert 2 <= step == last < 500
