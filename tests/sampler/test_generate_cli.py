"""`python -m ssrl_jax.generate` on a directory written by transformers' save_pretrained."""

import json
import runpy
import sys


from ssrl_jax import generate
from tests.helpers import user_error


PROMPT = "<think> who wrote hamlet"


def run_json(model_dir, capsys, *extra):
    generate.main(["--model", str(model_dir), "--prompt", PROMPT, "--chat", "--temperature",
                   "1.0", "--top-p", "0.9", "--top-k", "40", "--seed", "3",
                   "--max-new-tokens", "24", "--json", *extra])
    return json.loads(capsys.readouterr().out)


def test_json_output_with_sampling_and_stop_strings(model_dir, tokenizer, capsys):
    record = run_json(model_dir, capsys)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, tokenize=True)["input_ids"]
    n = len(record["tokens"])
    assert record["tokens"][:len(prompt)] == prompt
    assert record["sources"] == ["prompt"] * len(prompt) + ["policy"] * (n - len(prompt))
    assert len(record["logprobs"]) == len(record["entropies"]) == n
    assert all(lp <= 0 for lp in record["logprobs"][len(prompt):])
    assert record["num_steps"] == n - len(prompt) == 24 and record["finish_reason"] == "length"

    # Same seed with a stop string taken from that completion: it ends at the first token
    # whose text completes the string, and keeps that token.
    stop = next(ch for ch in record["completion"][4:] if ch.isascii() and ch.isalnum())
    stopped = run_json(model_dir, capsys, "--stop", stop, "</answer>")
    assert stopped["finish_reason"] == "stop_string" and stopped["matched_stop"] == stop
    generated = stopped["tokens"][len(prompt):]
    assert generated == record["tokens"][len(prompt):len(prompt) + len(generated)]
    assert stop in tokenizer.decode(generated) and stop not in tokenizer.decode(generated[:-1])


def test_flag_errors_name_the_flag(model_dir, capsys):
    assert "--temperature" in user_error(capsys, generate.main, [
        "--model", str(model_dir), "--prompt", "x", "--top-p", "0.5"])
    assert "temperature must be >= 0" in user_error(capsys, generate.main, [  # before loading
        "--model", str(model_dir), "--prompt", "x", "--temperature", "-1"])


def test_module_runs_as_a_script(model_dir, capsys, monkeypatch):
    """`python -m ssrl_jax.generate ...`, run in this process (runpy) to share its compiles."""
    monkeypatch.setattr(sys, "argv", ["generate", "--model", str(model_dir), "--prompt",
                                      "Paris is", "--max-new-tokens", "5"])
    monkeypatch.delitem(sys.modules, "ssrl_jax.generate")
    runpy.run_module("ssrl_jax.generate", run_name="__main__")
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out) > 1
