"""`bench memory`: the compiled step's per-device bytes agree with the shapes."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.xla_flags import xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache_dtype", ["", "int8"])
def test_memory_plan_of_the_tiny_config_on_two_devices(kv_cache_dtype):
    # No device count: the plan sets its own.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
    result = subprocess.run(
        [sys.executable, "-m", "ssrl_jax.bench", "memory", "--config",
         str(ROOT / "configs" / "smoke.py"), "--devices", "2", "--set", "rollout.max_new_tokens=16",
         "--set", "model.dtype=bfloat16", "--set", f"model.kv_cache_dtype={kv_cache_dtype}",
         "--json"], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert plan["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
    assert plan["slots"] == 1024 + 16 and plan["rows"] == 4 * 4
    assert (plan["param_dtype"], plan["dtype"]) == ("float32", "bfloat16")
    full = plan["num_params"] * 4  # fp32 master weights
    # FSDP halves every matrix; only the small norm vectors are replicated.
    assert full / 2 <= plan["params"] < 0.55 * full
    # The frozen reference and the rollout's weight copy are bf16: half the masters' bytes.
    assert plan["reference"] == plan["params"] // 2
    # The rollout decodes with a bf16 copy gathered over fsdp (the decode layout).
    assert plan["rollout_weights"] == plan["num_params"] * 2
    assert plan["weight_layout"] == "decode" and plan["backend"] == "cpu"
    assert 2 * plan["params"] <= plan["optimizer"] < 2 * plan["params"] + 1024  # fp32 mu, nu
    # Rows are split over fsdp: 2 layers x 8 rows x 1040 slots x 2 KV heads x (k, v) x 16
    # values of 2 B (bf16), or of 1 B plus one 4 B scale (int8).
    per_vector = 16 + 4 if kv_cache_dtype == "int8" else 16 * 2
    assert plan["kv_cache"] == 2 * 8 * 1040 * 2 * 2 * per_vector
    assert plan["arguments"] >= plan["params"] + plan["reference"] + plan["optimizer"]
    assert plan["temporaries"] > plan["kv_cache"]
