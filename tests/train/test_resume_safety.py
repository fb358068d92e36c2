"""Resume safety through `trainer.run`: another run's checkpoints are refused naming each
field, a corrupt latest step is quarantined (never deleted, no crash loop), redone steps do
not duplicate metrics, and a diverging step stops the run without saving it."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from ssrl_jax import checkpoints, resume, trainer
from ssrl_jax.run_log import METRICS_FILE
from tests.helpers_checkpoint_faults import flip_byte, params_data_file
from tests.train.test_trainer import ROOT, _env, read_jsonl, small_config


def config(train_file, total_steps=2):
    c = small_config(train_file, total_steps)
    c.checkpoint.update(every_steps=1, async_save=False)
    c.log.samples_every_steps = 0
    return c


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, short_qa):
    """A workdir with checkpoint steps 1 and 2 and their metrics."""
    workdir = tmp_path_factory.mktemp("base") / "run"
    trainer.run(config(short_qa), str(workdir))
    return workdir


@pytest.fixture
def workdir(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def snapshot(workdir):
    """{relative path: bytes} of every file under `workdir` (what must stay untouched)."""
    root = pathlib.Path(workdir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def steps_of(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())


@pytest.mark.slow
def test_another_runs_checkpoints_are_refused_naming_each_field(workdir, compile_counter,
                                                                 short_qa):
    before = snapshot(workdir)
    c = config(short_qa, total_steps=4)
    c.seed = 1
    c.batch_size = 4
    c.rollout.group_size = 4
    c.model.random.hidden_size = 64
    with pytest.raises(resume.RunMismatchError) as error, compile_counter:
        trainer.run(c, str(workdir))
    assert compile_counter.count == 0  # refused before the model is built or compiled
    message = str(error.value)
    for expected in ("model.hidden_size: 32 → 64", "config.seed: 0 → 1",
                     "config.batch_size: 2 → 4", "config.rollout.group_size: 2 → 4",
                     "--workdir NEW_DIR", "Nothing was changed"):
        assert expected in message, message
    assert snapshot(workdir) == before

    rows = short_qa.read_text().splitlines()
    other_data = workdir.parent / "other.jsonl"
    other_data.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # same rows, other order
    c = config(short_qa, total_steps=4)
    c.data.train_files = str(other_data)
    with pytest.raises(resume.RunMismatchError) as error:
        trainer.run(c, str(workdir))
    assert f"config.data.train_files: '{short_qa}' → " in str(error.value)
    assert "data.sha256" in str(error.value) and "data.rows" not in str(error.value)
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_cli_reports_the_mismatch_as_an_error(workdir, short_qa):
    before = snapshot(workdir)
    command = [sys.executable, "-m", "ssrl_jax.train", "--config",
               str(ROOT / "tests" / "train" / "resume_config.py"), "--workdir", str(workdir),
               f"--config.data.train_files={short_qa}", "--config.seed=5"]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode != 0
    assert "error:" in result.stderr and "config.seed: 0 → 5" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_corrupt_latest_step_is_quarantined_and_redone_once(workdir, capsys, short_qa):
    original = {r["step"]: r for r in read_jsonl(workdir / METRICS_FILE)}
    flip_byte(params_data_file(workdir / "checkpoints" / "2"))
    corrupt = snapshot(workdir / "checkpoints" / "2")

    result = trainer.run(config(short_qa, total_steps=3), str(workdir))
    assert (result.start_step, result.last_step) == (1, 3)
    output = capsys.readouterr().out
    quarantined = list((workdir / resume.QUARANTINE_SUBDIR).iterdir())
    assert [p.name.startswith("step-2-") for p in quarantined] == [True]
    assert f"checkpoint step 2 could not be read; moved it to {quarantined[0]}" in output
    assert snapshot(quarantined[0]) == corrupt  # moved as it was, not deleted
    assert steps_of(workdir) == [1, 2, 3]

    records = read_jsonl(workdir / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3]
    redone = records[1]
    for name in ("loss", "kl", "grad_norm", "reward"):
        assert redone[name] == original[2][name], name

    # No crash loop: the next start resumes from the redone step 3.
    again = trainer.run(config(short_qa, total_steps=3), str(workdir))
    assert (again.start_step, again.last_step) == (3, 3)


@pytest.mark.slow
def test_workdir_whose_steps_are_all_unreadable_is_refused_unchanged(workdir, short_qa):
    for step in (1, 2):
        flip_byte(params_data_file(workdir / "checkpoints" / str(step)))
    before = snapshot(workdir)
    with pytest.raises(resume.UnreadableCheckpointsError, match=r"steps \[1, 2\] can be read"):
        trainer.run(config(short_qa, total_steps=3), str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_diverging_step_stops_the_run_without_saving_it(workdir, short_qa):
    c = config(short_qa, total_steps=8)
    c.optim.update(learning_rate=1e30, warmup_ratio=0.0)  # the first update overflows
    with pytest.raises(trainer.TrainingDivergedError) as error:
        trainer.run(c, str(workdir))
    message = str(error.value)
    assert "not finite" in message or "NaN or infinity" in message
    latest = max(steps_of(workdir))
    assert f"the latest checkpoint, step {latest} in" in message
    diverged = read_jsonl(workdir / METRICS_FILE)[-1]["step"]
    assert latest < diverged
    # Every checkpoint left behind restores and verifies (finite, checksums match).
    model, meta = checkpoints.load_model(workdir)
    assert meta["step"] == latest
