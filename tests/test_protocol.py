"""The protocol strings byte for byte as SPEC §2 and Search-R1's agent loop write them."""

import pytest

from ssrl_jax.protocol import (ALLOWED_TAGS, INFO_PREFIX, INFO_SUFFIX, INVALID_ACTION_OBSERVATION,
                               PLACEHOLDERS, TAG_NAMES, tagged)


def test_tags_and_placeholders():
    assert ALLOWED_TAGS == {"<think>", "</think>", "<search>", "</search>", "<information>",
                            "</information>", "<answer>", "</answer>"}
    assert set(PLACEHOLDERS) == set(TAG_NAMES)
    assert tagged("search", "capital of France") == "<search> capital of France </search>"


def test_tagged_rejects_an_unknown_tag():
    with pytest.raises(ValueError, match="'result'"):
        tagged("result", "x")


def test_search_r1_observation_strings():
    # Search-R1 generation.py: the documents block and the invalid-action feedback.
    assert INFO_PREFIX + "Doc 1(Title: T) t" + INFO_SUFFIX == (
        "\n\n<information>Doc 1(Title: T) t</information>\n\n")
    assert INVALID_ACTION_OBSERVATION == (
        "\nMy previous action is invalid. If I want to search, I should put the query between "
        "<search> and </search>. If I want to give the final answer, I should put the answer "
        "between <answer> and </answer>. Let me try again.\n")
