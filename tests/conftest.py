"""Shared test setup: 8 fake CPU devices, no network, tiny model configs."""

import os

from tests.short_prompts import write_short_prompt_qa
from tests.xla_flags import xla_flags

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", xla_flags(devices=8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def eight_devices():
    devices = jax.devices()
    assert len(devices) == 8, f"tests expect 8 fake CPU devices, got {len(devices)}"
    return devices


class CompileCounter:
    """Counts XLA backend compilations while active (a real compile, not a cache hit)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == self.EVENT:
            self.count += 1

    def __enter__(self):
        self.count, self.active = 0, True
        return self

    def __exit__(self, *exc):
        self.active = False


@pytest.fixture(scope="session")
def short_qa(tmp_path_factory):
    """The sample QA rows with short prompts of their own (tests/short_prompts.py)."""
    return write_short_prompt_qa(tmp_path_factory.mktemp("short_qa") / "sample_short.jsonl")


@pytest.fixture(scope="session")
def compile_counter():
    return CompileCounter()


# The files of the longest total run time (the durations of a CI run), started first: with
# `--dist loadfile` each worker takes whole files, and xdist would otherwise order them by
# their number of tests, which put the multi-host files (few tests, minutes each) last,
# one worker running them alone at the end.
LONGEST_FIRST = (
    "search/test_multihost_search.py", "train/test_multihost.py",
    "search/test_compiled_rollout.py", "toyworld/test_toyworld_training.py",
    "search/test_search_training.py", "search/test_memory_plan.py", "rl/test_step.py",
    "train/test_trainer.py", "train/test_resume_safety.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist's --no-loadscope-reorder
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the rest keep their order
