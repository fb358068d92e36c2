"""A simulated 2-host cluster: 2 JAX processes x 4 CPU devices on loopback.

Each process runs `python -m ssrl_jax.train` with the explicit cluster contract
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), exactly as on a pod;
the run must equal one process with 8 devices, write its checkpoints from both
processes, and survive SIGTERM to one of them.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ssrl_jax import checkpoints
from ssrl_jax.run_log import METRICS_FILE
from tests.xla_flags import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPARED = ("reward", "exact_match", "format_score", "loss", "kl", "entropy", "grad_norm",
            "response_length", "trained_tokens", "decode_steps")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, *overrides):
    # 8 prompts on fsdp=4 x tensor=2: each host holds half the prompts, and each tensor pair
    # holds the same rows, so per-host input and once-per-row scoring are both exercised.
    return [sys.executable, "-m", "ssrl_jax.train", "--config", str(ROOT / "configs" / "smoke.py"),
            "--workdir", str(workdir), "--config.batch_size=8", "--config.mesh.fsdp=4",
            "--config.mesh.tensor=2", "--config.rollout.max_new_tokens=8", *overrides]


def _env(devices: int, cluster: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               XLA_FLAGS=xla_flags(devices))
    env.update(cluster or {})
    return env


def _start_cluster(workdir, *overrides, processes=2):
    port = _free_port()
    return [subprocess.Popen(
        _command(workdir, *overrides), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=_env(8 // processes, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                  "JAX_NUM_PROCESSES": str(processes),
                                  "JAX_PROCESS_ID": str(i)}))
        for i in range(processes)]


def _finish(procs, timeout=1200) -> list[str]:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-4000:]}"
    return outputs


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def _assert_same_run(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for name in COMPARED:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {a['step']} {name}")


@pytest.fixture(scope="module")
def overrides(short_qa):
    """4 steps on the sample QA rows with short prompts of their own (conftest's `short_qa`)."""
    return ("--config.total_steps=4", "--config.checkpoint.every_steps=2",
            f"--config.data.train_files={short_qa}")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, overrides):
    """The reference: 1 process x 8 devices, 4 steps."""
    workdir = tmp_path_factory.mktemp("one_process")
    result = subprocess.run(_command(workdir, *overrides),
                            capture_output=True, text=True, env=_env(8), timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    return _metrics(workdir)


@pytest.mark.slow
def test_sigterm_to_one_host_saves_the_same_step_on_both_and_resumes(tmp_path, one_process_run,
                                                                     overrides):
    """Preempted on one host, both save the same step; the resumed cluster finishes the run
    of one process, both hosts writing every checkpoint (each its own shards)."""
    workdir = tmp_path / "cluster"
    procs = _start_cluster(workdir, *overrides)
    metrics = workdir / METRICS_FILE
    deadline = time.time() + 480
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outputs = _finish(procs)
    saved = [int(m) for out in outputs for m in re.findall(r"preempted: saved step (\d+)", out)]
    assert saved, outputs[0][-3000:]  # process 0 prints it (it owns the log)
    for out in outputs:
        assert "preempted at step" in out, out[-3000:]
    step, _ = checkpoints.read_meta(workdir)
    assert step == saved[0] < 4

    outputs = _finish(_start_cluster(workdir, *overrides))
    assert all("finished at step 4/4" in out for out in outputs), outputs[0][-2000:]
    _assert_same_run(_metrics(workdir), one_process_run)
    directory = checkpoints.checkpoint_dir(workdir)
    assert {2, 4} <= {int(p.name) for p in directory.iterdir() if p.name.isdigit()}
    step, meta = checkpoints.read_meta(workdir)
    assert step == 4 and meta["data_iterator"]
