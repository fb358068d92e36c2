"""The config of tests/train/test_resume_safety.py's base run, for the CLI test (which gives
the base run's data file as an override)."""

from ssrl_jax.data.qa import SAMPLE_DATA
from tests.train.test_resume_safety import config


def get_config():
    return config(SAMPLE_DATA)
