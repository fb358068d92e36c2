"""The shipped assets are found whatever the working directory (editable installs included)."""

import os
import subprocess
import sys

from ssrl_jax.package_files import asset_path


def test_assets_resolve_from_outside_the_source_tree(tmp_path):
    code = ("from ssrl_jax.toyworld import model_dir; from ssrl_jax.data.tiny_tokenizer import "
            "quickstart_tokenizer_path; from ssrl_jax.eval.benchmarks import bundled_data_dir; "
            "print(model_dir(), quickstart_tokenizer_path(), bundled_data_dir(), sep='\\n')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert paths == [str(asset_path("toyworld", "model")), str(asset_path("tokenizer")),
                     str(asset_path("data", "benchmarks"))]
    assert all(os.path.isdir(p) for p in paths)
