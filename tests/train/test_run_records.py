"""Run identity comparison and metrics records of redone steps (no training, fast)."""

import json

from ssrl_jax import run_identity
from ssrl_jax.run_log import METRICS_FILE, SAMPLES_FILE, RunLog
from ssrl_jax.train_config import default_config


def test_identity_of_an_old_checkpoint_comes_from_its_config_and_model():
    config = default_config().to_dict()
    meta = {"model": {"hf_config": {"hidden_size": 64, "torch_dtype": "float32"},
                      "param_dtype": "float32", "dtype": "float32"},
            "config": json.loads(json.dumps(config))}
    old = run_identity.identity_of_meta(meta)
    assert old["model.hidden_size"] == 64 and "model.torch_dtype" not in old
    assert old["config.seed"] == 0 and old["config.rollout.group_size"] == 5
    new = {**old, "config.seed": 3, "tokenizer.vocab_size": 1024}  # absent in old: not compared
    assert run_identity.differences(old, new) == [("config.seed", 0, 3)]
    assert run_identity.describe(run_identity.differences(old, new)) == "config.seed: 0 → 3"
    assert run_identity.differences({"x": (1, 2)}, {"x": [1, 2]}) == []  # JSON round trip


def test_records_of_steps_after_the_resumed_one_are_dropped(tmp_path):
    lines = [json.dumps({"step": s, "loss": 0.1 * s}) for s in (1, 2, 3, 4)]
    (tmp_path / METRICS_FILE).write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')  # torn
    (tmp_path / SAMPLES_FILE).write_text(
        "".join(json.dumps({"step": s, "prompt": "p"}) + "\n" for s in (2, 2, 4, 4)))
    log = RunLog(tmp_path, total_steps=6, tensorboard=False)
    log.drop_records_after(2)
    log.step(3, {"loss": 0.5}, tokens=1.0)
    steps = [json.loads(l)["step"] for l in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3]
    samples = (tmp_path / SAMPLES_FILE).read_text().splitlines()
    assert [json.loads(l)["step"] for l in samples] == [2, 2]
