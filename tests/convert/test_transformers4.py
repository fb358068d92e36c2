"""Exports load in transformers 4.x: a Qwen and a Llama model, converted HF -> Orbax -> HF by
`python -m ssrl_jax.convert`, loaded by the newest transformers 4 (in `.venv-tf4`, which
.ci/run makes) with AutoTokenizer / AutoModelForCausalLM; their logits and tokens must
equal ours.

The 4.x packages are installed with `pip install --target .venv-tf4 --no-deps` and put first
on PYTHONPATH in a subprocess, so they shadow transformers 5 while torch comes from the main
environment. Without `.venv-tf4` the test is skipped, except in CI (CI=true), where it fails.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ssrl_jax.convert import main as convert
from ssrl_jax.data.tiny_tokenizer import quickstart_tokenizer_path
from ssrl_jax.models import load_pretrained
from tests.helpers import build_hf_model

transformers = pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parents[2]
TF4_ENV = ROOT / ".venv-tf4"
# Qwen's chat tokens: transformers 5 saves them as a list under `extra_special_tokens`.
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>"]
TEXTS = ["<|im_start|>user\nWho wrote Hamlet?<|im_end|>", "<search> capital of France </search>",
         "Ünïcödé naïve café"]

# Runs under transformers 4: loads each export and prints tokens and logits as JSON.
LOAD_IN_TF4 = """
import json, sys
import torch, transformers
out = {"version": transformers.__version__}
for directory in sys.argv[2:]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32)
    tokens = [tokenizer.encode(t, add_special_tokens=False) for t in json.loads(sys.argv[1])]
    with torch.no_grad():
        logits = [model(torch.tensor([ids])).logits[0].tolist() for ids in tokens]
    out[directory] = {"class": type(tokenizer).__name__, "tokens": tokens, "logits": logits,
                      "specials": tokenizer.additional_special_tokens}
print(json.dumps(out))
"""


def tf4_env() -> pathlib.Path:
    if (TF4_ENV / "transformers").is_dir():
        return TF4_ENV
    message = (f"no transformers 4.x environment at {TF4_ENV}; make it with the "
               "`pip install --target .venv-tf4` line of .ci/run")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def exported(name: str, tmp_path: pathlib.Path, specials: list[str]) -> pathlib.Path:
    """A tiny random HF model of `name` with the quick-start tokenizer (plus `specials`),
    through hf-to-orbax and orbax-to-hf (float32)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(quickstart_tokenizer_path())
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    source = tmp_path / f"{name}-source"
    build_hf_model(name, seed=3, vocab_size=len(tokenizer)).save_pretrained(source)
    tokenizer.save_pretrained(source)
    if specials:  # what makes transformers 4 fail unless the export rewrites it
        saved = json.loads((source / "tokenizer_config.json").read_text())
        assert saved["extra_special_tokens"] == specials
    convert(["hf-to-orbax", "--hf", str(source), "--out", str(tmp_path / f"{name}-work")])
    out = tmp_path / f"{name}-hf"
    convert(["orbax-to-hf", "--checkpoint", str(tmp_path / f"{name}-work"), "--out", str(out),
             "--dtype", "float32"])
    return out


@pytest.mark.slow
def test_qwen_and_llama_exports_load_in_transformers_4(tmp_path):
    env = tf4_env()
    exports = [exported("qwen2_bias_tied", tmp_path, QWEN_SPECIALS),
               exported("llama_rope3_tied", tmp_path, [])]
    done = subprocess.run(
        [sys.executable, "-c", LOAD_IN_TF4, json.dumps(TEXTS), *map(str, exports)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(env)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["version"].startswith("4."), results["version"]

    for directory, specials in zip(exports, (QWEN_SPECIALS, [])):
        theirs = results[str(directory)]
        assert theirs["class"] == "PreTrainedTokenizerFast"
        assert theirs["specials"] == specials
        ours_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)  # 5.x
        ours_tokens = [ours_tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
        assert theirs["tokens"] == ours_tokens
        if specials:
            assert ours_tokens[0][0] == ours_tokenizer.convert_tokens_to_ids(specials[0])
        model = load_pretrained(str(directory), param_dtype=jnp.float32)
        for ids, logits in zip(ours_tokens, theirs["logits"]):
            ours = np.asarray(model(jnp.asarray([ids]))[0])
            np.testing.assert_allclose(ours, np.asarray(logits), atol=1e-4, rtol=1e-4)
