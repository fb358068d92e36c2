"""The train step's memory plan: refused up front with the numbers, or run."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from ssrl_jax import trainer
from ssrl_jax import train_config as tc
from ssrl_jax.search import memory
from ssrl_jax.search.memory import MemoryPlan, MemoryPlanError, available_memory, check_plan
from tests.xla_flags import xla_flags

GB = 10**9
TINY = pathlib.Path(__file__).parents[2] / "configs" / "tiny.py"


def tiny_config(variant: str = ""):
    spec = importlib.util.spec_from_file_location("tiny_config", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def plan(micro_batches=1, temp=24 * GB, devices=1):
    return MemoryPlan(rows=64, slots=1416, micro_batches=micro_batches,
                      rows_per_micro_batch=64 // micro_batches, learn_temp=temp,
                      learn_new_outputs=0, rollout_state=GB // 10, devices_per_memory=devices)


def test_refusal_names_the_numbers_and_a_micro_batch_count_that_fits():
    with pytest.raises(MemoryPlanError) as e:
        check_plan(plan(), available=8 * GB, where="available host RAM", rows_per_mini_batch=64)
    assert str(e.value) == (
        "config.grpo.num_micro_batches=1: the step needs about 24.1 GB (per device: "
        "24.0 GB of learn temporaries for micro-batches of 64 of 64 responses × 1416 slots, 0.10 GB "
        "of rollout state), but the available host RAM is 8.0 GB; set "
        "config.grpo.num_micro_batches=4 (about 6.1 GB)")


def test_when_nothing_fits_it_says_what_else_to_change():
    with pytest.raises(MemoryPlanError, match=r"even config.grpo.num_micro_batches=64 needs about 0.5 GB: "
                                              r"shorten the sequence \(rollout.max_new_tokens"):
        check_plan(plan(devices=1), available=GB // 4, where="x", rows_per_mini_batch=64)
    with pytest.raises(MemoryPlanError, match=r"needs about 96.4 GB for its 4 devices"):
        check_plan(plan(devices=4), available=50 * GB, where="x", rows_per_mini_batch=64)


def test_a_plan_that_fits_or_unknown_memory_passes():
    check_plan(plan(micro_batches=16, temp=GB), available=8 * GB, where="x", rows_per_mini_batch=64)
    check_plan(plan(), available=None, where="x", rows_per_mini_batch=64)


def test_cpu_devices_plan_against_host_ram():
    available, where = available_memory(jax.devices())
    assert where == "available host RAM (MemAvailable)" and 0 < available < 1 << 50


@pytest.fixture
def eight_gb(monkeypatch):
    """Plan against 8 GB of host RAM, whatever this machine has (the 8 test CPU devices all
    share it)."""
    monkeypatch.setattr(memory, "_host_available", lambda: 8 * GB)


@pytest.mark.slow
def test_tiny_real_search_in_one_micro_batch_is_refused_before_any_step(eight_gb, server_url,
                                                                       tmp_path):
    config = tiny_config()
    config.rollout.mode = "real"
    config.search.url = server_url
    with pytest.raises(tc.ConfigFieldError) as e:
        trainer.run(config, str(tmp_path / "run"), stop_after=1)
    message = str(e.value)
    assert message.startswith("config.grpo.num_micro_batches=1: the step needs about ")
    assert re.search(r"micro-batches of 64 of 64 responses × \d+ slots", message), message
    assert "available host RAM (MemAvailable) is 8.0 GB; set config.grpo.num_micro_batches=" in message
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


# What `python -m ssrl_jax.train --config configs/tiny.py:real` sets up on one CPU device (the 8
# test devices share one host, and a micro-batch of 4 rows is not split over 8 of them), with
# 8 GB of RAM to plan for: the step compiles and its plan fits. (A real-search step runs in
# tests/search/test_search_training.py; one step of this config takes minutes on CI's CPUs.)
ONE_DEVICE_SETUP = """
import sys
from ssrl_jax import run_setup
from ssrl_jax.search import memory
from tests.search.test_memory_plan import tiny_config
memory._host_available = lambda: 8 * 10**9
config = tiny_config("real")
config.search.url = sys.argv[1]
run = run_setup.build_run(config, sys.argv[2])
stats = run.step.train_step.memory_analysis()
run.step.close()
print("BYTES", stats.temp_size_in_bytes + stats.argument_size_in_bytes
      + stats.output_size_in_bytes - stats.alias_size_in_bytes, run.start_step)
"""


@pytest.mark.slow
def test_tiny_real_variant_fits_in_8_gb(server_url, tmp_path):
    config = tiny_config("real")
    assert (config.rollout.mode, config.grpo.num_micro_batches) == ("real", 16)
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices=1), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", ONE_DEVICE_SETUP, server_url,
                          str(tmp_path / "run")],
                         cwd=TINY.parents[1], env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    needed, start_step = run.stdout.split("BYTES ")[1].split()
    # Well inside 8 GB, where one micro-batch needs several times that (the test above).
    assert 0 < int(needed) < 6 * GB and start_step == "0"
