"""The config of tests/train/test_resume_safety.py's base run, for the CLI test."""

from tests.train.test_resume_safety import config


def get_config():
    return config()
