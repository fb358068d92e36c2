"""`python -m ssrl_jax.evaluate` end to end, its config checks, and launch/eval_gpu.py.

Both evaluators run the Paris/Rome model of test_selfsearch.py (saved as an HF directory with
the shipped tokenizer) on the two bundled benchmarks; the GPU script uses its transformers
backend here and must give the same greedy records as the JAX path.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from ssrl_jax import evaluate
from ssrl_jax.eval.benchmarks import BenchmarkFileError, question_indices
from tests.eval.test_selfsearch import write_answering_model
from tests.search_r1_data import write_search_r1_parquet
from tests.helpers import user_error

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "eval_selfsearch.py")
EVAL_GPU = ROOT / "launch" / "eval_gpu.py"
COMMON = dict(benchmarks="nq,hotpotqa", data_dir="bundled", limit=6, num_samples=4,
              max_new_tokens=12, dtype="float32")


def argv(**fields):
    return ["evaluate", "--config", CONFIG] + [f"--config.{k}={v}" for k, v in fields.items()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_answering_model(tmp_path_factory.mktemp("answering_model"))


@pytest.fixture(scope="module")
def jax_run(model_dir, tmp_path_factory):
    """(results, output dir, stdout) of the CLI on the bundled nq + hotpotqa, 6 rows, K=4."""
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("eval_out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = evaluate.main(argv(model=model_dir, output_dir=out_dir, **COMMON))
    return results, out_dir, stdout.getvalue()


@pytest.mark.slow
def test_cli_writes_table_json_jsonl_and_png(jax_run):
    results, out_dir, stdout = jax_run
    for name in ("nq", "hotpotqa"):
        assert (out_dir / f"{name}.jsonl").is_file()
        with Image.open(out_dir / f"{name}_passk.png") as image:
            image.verify()
            assert image.format == "PNG"
    loaded = json.loads((out_dir / "results.json").read_text())
    assert loaded["backend"] == "jax" and loaded["settings"]["num_samples"] == 4
    assert loaded["config"]["data_dir"] == "bundled"
    for name in ("nq", "hotpotqa"):
        m = loaded["benchmarks"][name]["metrics"]
        assert m["num_questions"] == 6 and m["ks"] == [1, 2, 4]
        assert set(m["pass@k"]) == set(m["maj@k"]) == {"1", "2", "4"}
        assert m["pass@k"]["1"] <= m["pass@k"]["2"] <= m["pass@k"]["4"]
        lines = (out_dir / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 6 and all(len(json.loads(l)["samples"]) == 4 for l in lines)
    # limit=6 keeps a seeded sample of each benchmark, the same one the GPU script keeps.
    hotpot = loaded["benchmarks"]["hotpotqa"]
    assert hotpot["question_indices"] == question_indices(24, 6, seed=0) == [0, 6, 7, 11, 14, 17]
    # The model always answers Paris greedily: right only for hotpotqa's first question.
    assert hotpot["metrics"]["greedy"]["em"] == pytest.approx(1 / 6)
    assert loaded["benchmarks"]["nq"]["metrics"]["greedy"]["em"] == 0.0
    assert "HotpotQA (dev split, 6 questions, K=4)" in stdout
    assert "pass@k" in stdout and "average" in stdout and "results.json" in stdout
    assert loaded == json.loads(json.dumps(results))


@pytest.mark.slow
def test_gpu_script_transformers_backend_matches_greedy_records(jax_run, model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("eval_gpu", EVAL_GPU)
    eval_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_gpu)
    _, jax_dir, _ = jax_run
    out_dir = tmp_path / "gpu"
    results = eval_gpu.main(["--model", str(model_dir), "--benchmarks", "nq,hotpotqa",
                             "--data-dir", "bundled", "--limit", "6", "--num-samples", "4",
                             "--max-new-tokens", "12", "--dtype", "float32",
                             "--backend", "transformers", "--output-dir", str(out_dir)])
    assert results["backend"] == "transformers"
    for name in ("nq", "hotpotqa"):
        ours = [json.loads(l) for l in (jax_dir / f"{name}.jsonl").read_text().splitlines()]
        theirs = [json.loads(l) for l in (out_dir / f"{name}.jsonl").read_text().splitlines()]
        assert [r["greedy"] for r in theirs] == [r["greedy"] for r in ours]
        assert [set(r) for r in theirs] == [set(r) for r in ours]
        assert all(set(s) == set(ours[0]["samples"][0]) for r in theirs for s in r["samples"])
        assert all(s["answer"] in ("Paris", "Rome") for r in theirs for s in r["samples"])
        assert (out_dir / f"{name}_passk.png").is_file()
    gpu_metrics = json.loads((out_dir / "results.json").read_text())["benchmarks"]
    assert set(gpu_metrics["nq"]["metrics"]) == set(results["benchmarks"]["nq"]["metrics"])


def test_eval_modules_and_gpu_script_import_without_jax():
    """Block jax, flax, grain and ml_collections, then import what the GPU image needs."""
    code = (
        "import sys, importlib.util\n"
        "for name in ('jax', 'jaxlib', 'flax', 'grain', 'ml_collections', 'orbax'):\n"
        "    sys.modules[name] = None\n"
        "import ssrl_jax.eval.benchmarks, ssrl_jax.eval.report, ssrl_jax.eval.scoring\n"
        f"spec = importlib.util.spec_from_file_location('eval_gpu', {str(EVAL_GPU)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "module.build_parser().parse_args(['--model', 'm', '--data-dir', 'd'])\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("field,value,match", [
    ("benchmarks", "nq,squad", r"config.benchmarks='nq,squad': unknown benchmark 'squad'"),
    ("data_dir", "", r"config.data_dir='': must be a directory"),
    ("limit", -1, r"config.limit=-1: must be an integer >= 0"),
    ("dtype", "int8", r"config.dtype='int8': must be one of"),
    ("temperature", 0.0, r"config.temperature=0.0: must be a number > 0"),
    ("chat", "yes", r"config.chat='yes': must be one of \('auto', 'true', 'false'\)"),
    ("mode", "rag", r"config.mode='rag': must be one of"),
    ("num_samples", -2, r"config.num_samples=-2"),
    ("mesh.data", 0, r"config.mesh="),
    ("output_dir", "", r"config.output_dir=''"),
])
def test_config_errors_name_the_field(tmp_path, field, value, match):
    fields = {"model": tmp_path, "data_dir": "bundled", field: value}
    config = evaluate.parse_config(argv(**fields))
    with pytest.raises(evaluate.ConfigError, match=match):
        evaluate.check_config(config)


def test_config_needs_an_existing_model_and_rejects_unknown_fields(tmp_path):
    with pytest.raises(evaluate.ConfigError, match="config.model='': must be"):
        evaluate.check_config(evaluate.parse_config(argv(data_dir="bundled")))
    with pytest.raises(evaluate.ConfigError, match="must be an existing path"):
        evaluate.check_config(evaluate.parse_config(argv(model=tmp_path / "nope")))
    with pytest.raises(Exception, match="num_sample"):
        evaluate.parse_config(argv(model=tmp_path, num_sample=3))


def test_config_defaults_follow_spec(tmp_path):
    config = evaluate.parse_config(argv(model=tmp_path, data_dir="bundled"))
    settings, benchmarks, data_dir = evaluate.check_config(config)
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.7, 0.95, 0)
    assert settings.num_samples == 8 and settings.greedy and settings.chat == "auto"
    assert [b.name for b in benchmarks] == ["nq", "triviaqa", "hotpotqa", "2wikimultihopqa",
                                            "musique", "bamboogle"]
    assert pathlib.Path(data_dir, "nq", "test.jsonl").is_file()


def search_r1_file(path):
    """Search-R1's test.parquet layout: nq (2 rows) then hotpotqa (2 rows, the first Paris)."""
    return write_search_r1_parquet(path, {
        "nq": [{"id": "test_0", "question": "capital of Italy", "golden_answers": ["Rome"]},
               {"id": "test_1", "question": "capital of Spain", "golden_answers": ["Madrid"]}],
        "hotpotqa": [{"id": "test_0", "question": "where is the Louvre",
                      "golden_answers": ["Paris"]},
                     {"id": "test_1", "question": "where is the Prado",
                      "golden_answers": ["Madrid"]}]})


def test_config_accepts_qa_files_without_a_data_dir(tmp_path):
    path = search_r1_file(tmp_path / "test.parquet")
    _, specs, data_dir = evaluate.check_config(
        evaluate.parse_config(argv(model=tmp_path, benchmarks=path)))
    assert specs == [path] and data_dir is None
    absent = tmp_path / "absent.parquet"
    with pytest.raises(evaluate.ConfigError, match=r"config.benchmarks=.*absent.parquet is no file"):
        evaluate.check_config(evaluate.parse_config(argv(model=tmp_path, benchmarks=absent)))
    with pytest.raises(evaluate.ConfigError, match="config.data_dir"):
        evaluate.check_config(evaluate.parse_config(argv(model=tmp_path, benchmarks=f"nq,{path}")))


@pytest.mark.slow
def test_cli_reads_a_search_r1_test_parquet_with_its_prompts(model_dir, tmp_path, caplog):
    import logging

    path = search_r1_file(tmp_path / "test.parquet")
    out_dir = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        results = evaluate.main(argv(model=model_dir, benchmarks=path, num_samples=0,
                                     max_new_tokens=12, dtype="float32", output_dir=out_dir))
    assert list(results["benchmarks"]) == ["nq", "hotpotqa"]
    hotpot = results["benchmarks"]["hotpotqa"]
    assert hotpot["display_name"] == "HotpotQA" and hotpot["file"] == path
    # Greedy "Paris" after the file's own chat prompt: right on the Louvre question only.
    assert hotpot["metrics"]["greedy"]["em"] == 0.5
    assert results["benchmarks"]["nq"]["metrics"]["greedy"]["em"] == 0.0
    assert "2 rows use the file's chat messages verbatim" in caplog.text
    lines = [json.loads(l) for l in (out_dir / "hotpotqa.jsonl").read_text().splitlines()]
    assert [l["question"] for l in lines] == ["where is the Louvre?", "where is the Prado?"]
    # SSRL's protocol: the response runs past its first </answer> (here to the token cap).
    assert all(l["greedy"]["finish_reason"] == "length" for l in lines)


def test_missing_benchmark_file_fails_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    with pytest.raises(BenchmarkFileError, match="bamboogle/test.jsonl"):
        evaluate.run(evaluate.parse_config(argv(model=tmp_path / "model", data_dir=tmp_path,
                                                benchmarks="bamboogle")))
    error = user_error(capsys, evaluate.main, argv(model=tmp_path / "model", data_dir=tmp_path,
                                                   benchmarks="bamboogle"))
    assert "bamboogle/test.jsonl" in error


def load_eval_gpu():
    spec = importlib.util.spec_from_file_location("eval_gpu", EVAL_GPU)
    eval_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_gpu)
    return eval_gpu


def paris_id(model_dir):
    import transformers

    (token,) = transformers.AutoTokenizer.from_pretrained(model_dir).encode(
        " Paris", add_special_tokens=False)
    return token


def test_suppressed_tokens_change_the_greedy_answer(model_dir, tmp_path):
    """The model answers Paris greedily (Paris and Rome tie); with Paris's id suppressed, the
    same greedy decoding answers Rome, in both evaluators."""
    results = evaluate.main(argv(model=model_dir, benchmarks="hotpotqa", data_dir="bundled",
                                 limit=3, num_samples=0, max_new_tokens=12, dtype="float32",
                                 suppressed_token_ids=paris_id(model_dir),
                                 output_dir=tmp_path / "jax"))
    assert list(results["settings"]["suppressed_token_ids"]) == [paris_id(model_dir)]
    lines = (tmp_path / "jax" / "hotpotqa.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["greedy"]["answer"] for r in records] == ["Rome"] * 3


def test_gpu_script_accepts_toyworld_and_suppressed_tokens(model_dir, tmp_path):
    results = load_eval_gpu().main([
        "--model", str(model_dir), "--data-dir", "toyworld", "--limit", "2",
        "--num-samples", "0", "--max-new-tokens", "12", "--dtype", "float32",
        "--backend", "transformers", "--output-dir", str(tmp_path),
        "--suppressed-token-ids", str(paris_id(model_dir))])
    assert list(results["benchmarks"]) == ["toyworld_1hop", "toyworld_2hop"]
    for name in results["benchmarks"]:
        records = [json.loads(l) for l in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert [r["greedy"]["answer"] for r in records] == ["Rome", "Rome"]


def test_gpu_script_user_errors_exit_2(model_dir, tmp_path, capsys):
    main = load_eval_gpu().main
    assert "--model" in user_error(capsys, main, ["--model", str(tmp_path), "--data-dir",
                                                  "bundled"])
    assert "--limit=-1" in user_error(capsys, main, ["--model", str(model_dir), "--data-dir",
                                                     "bundled", "--limit", "-1"])
    assert "suppressed_token_ids" in user_error(capsys, main, [
        "--model", str(model_dir), "--data-dir", "bundled", "--suppressed-token-ids", "x"])
    assert "squad" in user_error(capsys, main, ["--model", str(model_dir), "--data-dir",
                                                "bundled", "--benchmarks", "squad"])


def test_gpu_script_vllm_backend_with_a_stand_in_module(monkeypatch, tmp_path):
    """The vLLM path without vLLM: a stand-in module records the requests and answers them."""
    import importlib.machinery
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, prompts, sampling_params):
            calls.setdefault("generate", []).append((prompts, sampling_params))
            out = types.SimpleNamespace
            endings = [("length", None, "<answer> Paris"), ("stop", "</answer>",
                       "<answer> Paris </answer>"), ("stop", 4, "<answer> Rome")]
            return [out(outputs=[out(text=text, token_ids=[1] * (i + 2), finish_reason=f,
                                     stop_reason=r)
                                 for i, (f, r, text) in zip(range(p.n), endings * p.n)])
                    for p in sampling_params]

    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    spec = importlib.util.spec_from_file_location("eval_gpu_vllm", EVAL_GPU)
    eval_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_gpu)

    from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path

    tok_dir = quickstart_tokenizer_path()
    # Seed 14 samples hotpotqa rows 0 (gold Paris) and 23.
    results = eval_gpu.main(["--model", tok_dir, "--benchmarks", "hotpotqa", "--data-dir",
                             "bundled", "--limit", "2", "--num-samples", "3", "--seed", "14",
                             "--stop-at-answer", "--output-dir", str(tmp_path)])
    assert results["backend"] == "vllm" and calls["llm"]["seed"] == 14
    assert results["benchmarks"]["hotpotqa"]["question_indices"] == [0, 23]
    (greedy_prompts, greedy_params), (_, sample_params) = calls["generate"]
    assert all("prompt_token_ids" in p for p in greedy_prompts) and len(greedy_prompts) == 2
    assert [p.temperature for p in greedy_params] == [0.0, 0.0]
    first = sample_params[0]
    assert (first.n, first.temperature, first.top_p, first.top_k) == (3, 0.7, 0.95, -1)
    assert first.stop == ["</answer>"] and first.include_stop_str_in_output
    assert len({p.seed for p in sample_params}) == 2
    records = [json.loads(l) for l in (tmp_path / "hotpotqa.jsonl").read_text().splitlines()]
    assert [s["finish_reason"] for s in records[0]["samples"]] == ["length", "stop_string", "eos"]
    assert [s["num_tokens"] for s in records[0]["samples"]] == [2, 3, 4]
    assert records[0]["samples"][1]["em"] == 1.0 and records[0]["greedy"]["answer"] is None
