"""`model.path` naming an Orbax checkpoint (how a pod loads a model: each host restores only
its own shards) trains exactly as the Hugging Face directory it was converted from."""

import json
import pathlib

import pytest

from ssrl_jax import model_source, trainer
from ssrl_jax.convert import main as convert
from ssrl_jax.data.qa import SAMPLE_DATA
from ssrl_jax.package_files import asset_path
from ssrl_jax.run_log import METRICS_FILE
from ssrl_jax.train_config import default_config

COMPARED = ("reward", "exact_match", "format_score", "loss", "kl", "entropy", "grad_norm",
            "response_length", "trained_tokens")


def _config(model_path, train_file=SAMPLE_DATA):
    c = default_config()
    c.data.train_files = str(train_file)
    c.total_steps = 2
    c.batch_size = 2
    c.model.update(path=str(model_path), param_dtype="float32", dtype="float32", remat="none")
    c.rollout.update(group_size=2, max_new_tokens=8)
    c.mesh.update(fsdp=4, tensor=2)
    c.optim.update(learning_rate=1e-3, warmup_ratio=0.0)
    c.checkpoint.update(every_steps=2, async_save=False)
    c.log.update(samples_every_steps=0, tensorboard=False)
    return c


def _metrics(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / METRICS_FILE).read_text()
            .splitlines()]


@pytest.mark.slow
def test_a_converted_checkpoint_trains_like_its_hugging_face_directory(tmp_path, short_qa):
    hf_dir = asset_path("toyworld", "model")
    convert(["hf-to-orbax", "--hf", str(hf_dir), "--out", str(tmp_path / "init")])

    trainer.run(_config(hf_dir, short_qa), str(tmp_path / "from_hf"))
    from_checkpoint = trainer.run(_config(tmp_path / "init", short_qa),
                                  str(tmp_path / "from_orbax"))
    assert from_checkpoint.last_step == 2
    for a, b in zip(_metrics(tmp_path / "from_orbax"), _metrics(tmp_path / "from_hf"),
                    strict=True):
        for name in COMPARED:
            assert a[name] == pytest.approx(b[name], rel=1e-6, abs=1e-6), (a["step"], name)


def test_model_path_kind_is_told_apart(tmp_path):
    from ssrl_jax import checkpoints

    assert not checkpoints.is_checkpoint_path(asset_path("toyworld", "model"))
    assert not checkpoints.is_checkpoint_path(tmp_path)
    assert model_source.model_checkpoint_meta(_config(asset_path("toyworld", "model"))) is None
