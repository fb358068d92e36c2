"""Real-search training with TTRL rewards on a simulated 2-host cluster (2 JAX processes x 4
CPU devices on loopback, as tests/train/test_multihost.py): each host's retriever callback
serves the rows it holds, each host scores whole groups, and the run equals one process with
8 devices, search counts included."""


import numpy as np
import pytest

from tests.search.search_model import write_searching_model
from tests.short_prompts import write_short_prompt_qa
from tests.train.test_multihost import _env, _finish, _metrics, _start_cluster

COMPARED = ("reward", "exact_match", "gold_exact_match", "loss", "kl", "grad_norm",
            "response_length",
            "trained_tokens", "real_searches", "self_searches", "injected_tokens",
            "search_queries", "decode_steps")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory, server_url):
    model = write_searching_model(tmp_path_factory.mktemp("searching_model"))
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [("q1", "What is the capital of France?", ["Paris"]),
            ("q2", "Which river flows through Paris?", ["Seine"]),
            ("q3", "Where is the Louvre?", ["Paris"]),
            ("q4", "What is the largest river?", ["Amazon"]),
            ("q5", "Where is the Eiffel Tower?", ["Paris"]),
            ("q6", "Which city hosted the 1896 Olympics?", ["Athens"]),
            ("q7", "Which city is the capital of France?", ["Paris"]),
            ("q8", "Which river is the longest?", ["Nile"])]
    write_short_prompt_qa(data, [{"id": i, "question": q, "golden_answers": g,
                                  "data_source": "nq"} for i, q, g in rows])
    # 8 prompts x 2 responses = 16 rows on fsdp=4 x tensor=2: each host holds 8 rows, and its
    # retriever and scoring callbacks get 2 rows (one whole group) per device.
    return [f"--config.model.path={model}", "--config.model.tokenizer=",
            f"--config.data.train_files={data}", "--config.data.shuffle=false",
            "--config.batch_size=8", "--config.rollout.group_size=2",
            "--config.rollout.max_new_tokens=40", "--config.rollout.mode=real",
            "--config.grpo.reward=ttrl",
            f"--config.search.url={server_url}", "--config.search.topk=2",
            "--config.search.max_turns=2", "--config.search.max_info_tokens=24",
            "--config.total_steps=2", "--config.checkpoint.every_steps=1",
            "--config.checkpoint.async_save=false", "--config.mesh.fsdp=4",
            "--config.mesh.tensor=2"]


@pytest.mark.slow
def test_two_hosts_search_their_own_rows_and_equal_one(tmp_path, overrides):
    import subprocess

    from tests.train.test_multihost import _command

    one = tmp_path / "one"
    result = subprocess.run(_command(one, *overrides), capture_output=True, text=True,
                            env=_env(8), timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    two = tmp_path / "two"
    _finish(_start_cluster(two, *overrides))

    want, got = _metrics(one), _metrics(two)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for a, b in zip(got, want):
        for name in COMPARED:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {a['step']} {name}")
    # Every response searched twice for real, and the retriever saw each query once: 16 rows
    # x 2 searches, counted over both hosts. Each group agrees on Paris (TTRL's exact match 1),
    # the golds on half the questions.
    first = got[0]
    assert first["real_searches"] == 2.0 and first["search_queries"] == 32.0
    assert first["exact_match"] == 1.0 and first["gold_exact_match"] == 0.5
