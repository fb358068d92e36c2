"""One error style: every command line stops on bad input with exit status 2 and one line
`error: <what>, <where>, <what to do>` on stderr, never a traceback (ssrl_jax/cli_errors.py).

Most commands are called through their `main` (fast); train and evaluate also run as real
processes, since absl and config_flags parse their flags before our code runs.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ssrl_jax import bench, evaluate, generate
from ssrl_jax.cli_errors import UserError, cli_main
from ssrl_jax.data import tiny_tokenizer
from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
from ssrl_jax.search import index as index_cli
from ssrl_jax.search import server as server_cli
from ssrl_jax.toyworld import pretrain
from tests.helpers import build_hf_model, user_error

ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL_CONFIG = str(ROOT / "configs" / "eval_selfsearch.py")
ROW = {"id": "q1", "question": "Who wrote Hamlet?", "golden_answers": ["Shakespeare"]}


def run_cli(*args, timeout=300):
    """A command as its own process: (exit status, stderr)."""
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done.returncode, done.stderr


def assert_one_error_line(code, stderr, *expected):
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    for text in expected:
        assert text in last, last
    return last


@pytest.fixture
def latin1_jsonl(tmp_path):
    """A FlashRAG file whose second line is Latin-1, not UTF-8."""
    path = tmp_path / "test.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b"\n" + json.dumps(
        dict(ROW, id="q2", question="caf\u00e9?"), ensure_ascii=False).encode("latin-1") + b"\n")
    return path


def test_user_error_reads_what_where_fix_and_bugs_keep_their_traceback(capsys):
    error = UserError("no config.json", "--model /m", "pass a model directory")
    assert str(error) == "no config.json, --model /m, pass a model directory"

    @cli_main
    def buggy(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        buggy([])
    assert user_error(capsys, cli_main(lambda argv: open(argv[0])), ["/nonexistent/x"]) == (
        "error: No such file or directory, /nonexistent/x, check the path")


def test_evaluate_flags_and_config_fields(capsys, tmp_path):
    def error(*args):
        return user_error(capsys, evaluate.main, ["evaluate", *args])

    assert error("--config", EVAL_CONFIG, "--config.num_sample=3") == (
        "error: unknown config field 'num_sample', --config.num_sample, did you mean "
        "'num_samples'? (use a field listed in configs/eval_selfsearch.py)")
    assert "field 'nope', --config.nope.x, " in error("--config", EVAL_CONFIG, "--config.nope.x=1")
    assert "config file not found, --config nope.py" in error("--config", "nope.py")
    assert "--config.limit=x" in error("--config", EVAL_CONFIG, "--config.limit=x")
    assert "unexpected arguments ['extra']" in error("--config", EVAL_CONFIG, "extra")
    assert "config.model=" in error("--config", EVAL_CONFIG, "--config.data_dir=bundled")


def test_evaluate_bad_data_names_the_file_and_line(capsys, tmp_path, latin1_jsonl):
    data = tmp_path / "data"
    (data / "nq").mkdir(parents=True)
    latin1_jsonl.rename(data / "nq" / "test.jsonl")
    argv = ["evaluate", "--config", EVAL_CONFIG, f"--config.model={tmp_path}",
            f"--config.data_dir={data}", "--config.benchmarks=nq"]
    assert f"{data / 'nq' / 'test.jsonl'}: line 2, convert the file to UTF-8" in user_error(
        capsys, evaluate.main, argv)
    (data / "nq" / "test.jsonl").write_text(json.dumps(dict(ROW, golden_answers="x")) + "\n")
    assert f"{data / 'nq' / 'test.jsonl'}: row 1: field 'golden_answers'" in user_error(
        capsys, evaluate.main, argv)


def test_generate_names_the_model_and_truncated_weights(capsys, tmp_path):
    assert "--model " in user_error(capsys, generate.main, ["--model", str(tmp_path),
                                                            "--prompt", "hi"])
    assert "need --temperature" in user_error(capsys, generate.main, [
        "--model", str(tmp_path), "--prompt", "hi", "--top-k", "3"])
    assert "--prompt" in user_error(capsys, generate.main, ["--model", str(tmp_path)])
    model_dir = tmp_path / "model"
    build_hf_model("llama_untied", vocab_size=1024).save_pretrained(model_dir)
    tokenizer_dir = pathlib.Path(quickstart_tokenizer_path())
    for name in os.listdir(tokenizer_dir):
        (model_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    error = user_error(capsys, generate.main, ["--model", str(model_dir), "--prompt", "hi"])
    assert error.startswith("error: cannot read the safetensors file (")
    assert error.endswith(f", {weights}, download or export it again")


def test_bench_search_toyworld_and_tokenizer_commands(capsys, tmp_path):
    assert user_error(capsys, bench.main, ["memory", "--config", "configs/tiny.py", "--set",
                                           "nope=1"]) == (
        "error: unknown config field 'nope', --set nope=1, use a field of configs/tiny.py")
    assert "nope.py" in user_error(capsys, bench.main, ["memory", "--config", "nope.py"])
    assert "invalid choice: 'fly'" in user_error(capsys, bench.main, ["fly"])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"id": "1", "contents": "Hamlet\\nA play."}\n'
                       b'{"id": "2", "contents": "Caf\xe9\\nA place."}\n')
    assert f"not UTF-8 text (byte 29 of the line is b'\\xe9'), {corpus}: line 2, " in user_error(
        capsys, index_cli.main, ["--corpus", str(corpus), "--out", str(tmp_path / "index")])
    assert "missing.jsonl" in user_error(capsys, index_cli.main, [
        "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "index")])
    assert "--index" in user_error(capsys, server_cli.main, [])
    assert "--steps" in user_error(capsys, pretrain.main, ["--out", "x", "--steps", "many"])
    assert "--out" in user_error(capsys, tiny_tokenizer.main, [])


@pytest.mark.slow
def test_train_and_evaluate_processes_exit_2_without_traceback(tmp_path, latin1_jsonl):
    tiny = ["ssrl_jax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w")]
    assert_one_error_line(*run_cli(*tiny, "--config.rollout.nope=1"),
                          "unknown config field 'nope', --config.rollout.nope")
    assert_one_error_line(*run_cli("ssrl_jax.train", "--config", "configs/nope.py"),
                          "config file not found")
    assert_one_error_line(*run_cli("ssrl_jax.train", "--bogus"), "Unknown command line flag")
    assert_one_error_line(*run_cli(*tiny, "--config.rollout.suppressed_token_ids=x"),
                          "config.rollout.suppressed_token_ids='x'")
    assert_one_error_line(*run_cli(*tiny, f"--config.data.train_files={latin1_jsonl}"),
                          f"{latin1_jsonl}: line 2, convert the file to UTF-8")
    assert_one_error_line(*run_cli("ssrl_jax.evaluate", "--config", EVAL_CONFIG,
                                   "--config.nope=1"), "unknown config field 'nope'")
