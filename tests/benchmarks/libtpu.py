"""Shared preamble of the tests that compile for a TPU topology with libtpu (no chip)."""

import importlib.util
import os

import pytest


def require_libtpu() -> None:
    """Skips the calling test module without libtpu; in CI (CI=true) a missing libtpu fails.

    Compiling for a topology uses no chip, so other processes (a parallel test worker, a
    `bench memory --topology` run) may hold libtpu at the same time.
    """
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("CI must install libtpu (pip install -e '.[tpu]') for the TPU "
                               "plan")
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]')",
                    allow_module_level=True)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
