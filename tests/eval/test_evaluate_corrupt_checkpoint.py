"""`python -m ssrl_jax.evaluate` on a training workdir whose latest step is corrupt: it
evaluates the newest step that verifies, with a warning naming the skipped one."""

import contextlib
import io
import logging

import numpy as np
import pytest
from flax import nnx

from ssrl_jax import checkpoints, evaluate
from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
from ssrl_jax.models import ModelConfig, init_model
from tests.eval.test_evaluate_cli import argv
from tests.helpers_checkpoint_faults import flip_byte, params_data_file

MODEL = ModelConfig(family="llama", vocab_size=1024, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, bos_token_id=0,
                    eos_token_id=4, pad_token_id=5)


@pytest.mark.slow
def test_corrupt_latest_step_falls_back_to_the_previous_one(tmp_path, caplog):
    workdir = tmp_path / "run"
    manager = checkpoints.make_manager(checkpoints.checkpoint_dir(workdir), async_save=False)
    meta = {"model": checkpoints.model_meta(MODEL), "tokenizer": str(quickstart_tokenizer_path())}
    for step, seed in ((1, 0), (2, 1)):
        params = nnx.state(init_model(MODEL, seed=seed), nnx.Param)
        checkpoints.save(manager, step, params=params, meta=meta)
    manager.wait_until_finished()
    flip_byte(params_data_file(workdir / "checkpoints" / "2"))

    stdout = io.StringIO()
    with caplog.at_level(logging.WARNING), contextlib.redirect_stdout(stdout):
        results = evaluate.main(argv(model=workdir, output_dir=tmp_path / "out",
                                     benchmarks="nq", data_dir="bundled", limit=2,
                                     num_samples=2, max_new_tokens=4, dtype="float32"))
    assert "checkpoint step 2 is unreadable (CorruptCheckpointError" in caplog.text
    assert "checksum mismatch" in caplog.text or "NaN or infinity" in caplog.text
    assert results["benchmarks"]["nq"]["metrics"]["num_questions"] == 2

    fallback, used = checkpoints.load_model(workdir)
    assert used["step"] == 1
    np.testing.assert_array_equal(np.asarray(fallback.embed[...]),
                                  np.asarray(init_model(MODEL, seed=0).embed[...]))
