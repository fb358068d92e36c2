"""Training with real search (Search-R1 style) and with TTRL rewards, against a real server.

The policy is the scripted searching model of search_model.py (saved as an HF directory and
loaded through config.model.path), so its searches really reach the BM25 server on loopback.
Runs on the 8 fake CPU devices (config.mesh fsdp=-1).
"""

import json
import pathlib

import numpy as np
import pytest

from ssrl_jax import trainer
from ssrl_jax import train_config as tc
from ssrl_jax.run_log import METRICS_FILE, SAMPLES_FILE
from ssrl_jax.search.rollout import SearchPolicy
from tests.search.search_model import write_searching_model
from tests.short_prompts import write_short_prompt_qa

COMPARED = ("reward", "exact_match", "loss", "kl", "grad_norm", "response_length",
            "trained_tokens", "real_searches", "self_searches")


@pytest.fixture(scope="module")
def searching_model(tmp_path_factory):
    return write_searching_model(tmp_path_factory.mktemp("searching_model"))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [("q1", "What is the capital of France?", ["Paris"]),
            ("q2", "Which river flows through Paris?", ["Seine"]),
            ("q3", "Where is the Louvre?", ["Paris"]),
            ("q4", "What is the largest river?", ["Amazon"])]
    return write_short_prompt_qa(path, [{"id": i, "question": q, "golden_answers": g,
                                         "data_source": "nq"} for i, q, g in rows])


def search_config(model_dir, train_file, url, *, mode="real", reward="ssrl", total_steps=2):
    c = tc.default_config()
    c.total_steps = total_steps
    c.batch_size = 2
    c.model.path = str(model_dir)
    c.model.update(param_dtype="float32", dtype="float32", remat="none")
    c.data.update(train_files=str(train_file), chat="false", shuffle=False)
    c.rollout.update(group_size=2, max_new_tokens=40, mode=mode)
    c.grpo.reward = reward
    c.search.update(url=url, topk=2, max_turns=2, max_info_tokens=24)
    c.optim.update(learning_rate=1e-3, warmup_ratio=0.0)
    c.checkpoint.update(every_steps=1, async_save=False)
    c.log.update(samples_every_steps=1, num_samples=2, tensorboard=False)
    return c


def read_jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_real_search_training_resumes_exactly(searching_model, train_file, server_url,
                                              tmp_path):
    config = search_config(searching_model, train_file, server_url)
    full = trainer.run(config, str(tmp_path / "full"))
    assert (full.start_step, full.last_step) == (0, 2)
    trainer.run(config, str(tmp_path / "split"), stop_after=1)
    resumed = trainer.run(config, str(tmp_path / "split"))
    assert (resumed.start_step, resumed.last_step) == (1, 2)

    expected = {r["step"]: r for r in read_jsonl(tmp_path / "full" / METRICS_FILE)}
    got = {r["step"]: r for r in read_jsonl(tmp_path / "split" / METRICS_FILE)}
    for name in COMPARED:
        assert got[2][name] == expected[2][name], name

    first = expected[1]
    # Every response searched twice for real (max_turns=2), retrieved text was injected and
    # none of it was trained on; the client's counters went into the metrics.
    assert first["real_searches"] == 2.0 and first["failed_searches"] == 0.0
    assert first["injected_tokens"] > 0 and first["masked_share"] > 0
    assert first["search_queries"] == 8.0 and first["search_requests"] >= 1
    assert first["exact_match"] == 0.5  # the model always answers Paris: 2 of 4 golds
    samples = read_jsonl(tmp_path / "full" / SAMPLES_FILE)
    assert "<information>Doc 1(Title: " in samples[0]["response"]


@pytest.mark.slow
def test_ttrl_rewards_need_no_golds(searching_model, train_file, server_url, tmp_path):
    config = search_config(searching_model, train_file, server_url, mode="first_k_real",
                           reward="ttrl", total_steps=1)
    result = trainer.run(config, str(tmp_path / "ttrl"))
    (record,) = read_jsonl(tmp_path / "ttrl" / METRICS_FILE)
    assert result.last_step == 1
    # The group always agrees on Paris: full TTRL agreement, while gold EM is 2 of 4.
    assert record["exact_match"] == 1.0 and record["gold_exact_match"] == 0.5
    assert record["real_searches"] == 1.0
    assert np.isfinite(record["loss"])


def test_real_mode_without_url_names_the_field(searching_model, train_file, tmp_path):
    config = search_config(searching_model, train_file, "")
    with pytest.raises(tc.ConfigFieldError, match="config.search.url"):
        trainer.run(config, str(tmp_path / "run"))


def test_search_r1_config_validates():
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "search_r1.py"
    spec = importlib.util.spec_from_file_location("search_r1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    tc.validate(config)
    assert (config.rollout.mode, config.search.topk, config.search.max_info_tokens) == (
        "real", 3, 500)
    assert SearchPolicy.from_config(config).protocol == "search_r1"
