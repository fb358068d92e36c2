"""The trajectory protocol: the tags a response is written in and the text a search appends.

SPEC §2 (trajectory format): ``<think> … </think>``, then any number of ``<search> query
</search>`` + ``<information> documents </information>`` + ``<think> … </think>``, then
``<answer> … </answer>``. The instruction prompts show each tag around its placeholder, and a
body that copies a placeholder gets no format credit (§2, §3). A real search appends its
documents as Search-R1's observation ``INFO_PREFIX + documents + INFO_SUFFIX``; Search-R1's
agent loop answers a turn with neither a search nor an answer with
``INVALID_ACTION_OBSERVATION``. Rewards, masks, prompts, rollouts, evaluation and the toy world
take the strings from here.
"""

from __future__ import annotations

__all__ = ["ALLOWED_TAGS", "ANSWER_CLOSE", "ANSWER_OPEN", "INFO_PREFIX", "INFO_SUFFIX",
           "INFORMATION_CLOSE", "INFORMATION_OPEN", "INVALID_ACTION_OBSERVATION", "PLACEHOLDERS",
           "SEARCH_CLOSE", "SEARCH_OPEN", "TAG_NAMES", "THINK_CLOSE", "THINK_OPEN", "tagged"]

TAG_NAMES: tuple[str, ...] = ("think", "search", "information", "answer")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFORMATION_OPEN, INFORMATION_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
ALLOWED_TAGS: frozenset[str] = frozenset(
    [f"<{name}>" for name in TAG_NAMES] + [f"</{name}>" for name in TAG_NAMES])
# Placeholder text shown in the instruction prompt; a body containing it gets no format credit.
PLACEHOLDERS: dict[str, str] = {
    "think": "your thoughts",
    "search": "your query",
    "information": "your information",
    "answer": "your answer",
}

INFO_PREFIX = "\n\n" + INFORMATION_OPEN
INFO_SUFFIX = INFORMATION_CLOSE + "\n\n"
INVALID_ACTION_OBSERVATION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    f"{SEARCH_OPEN} and {SEARCH_CLOSE}. If I want to give the final answer, I should put the "
    f"answer between {ANSWER_OPEN} and {ANSWER_CLOSE}. Let me try again.\n")


def tagged(name: str, body: str) -> str:
    """``"<name> body </name>"``: one block as the prompts and example trajectories write it."""
    if name not in TAG_NAMES:
        raise ValueError(f"tag name must be one of {TAG_NAMES}, got {name!r}")
    return f"<{name}> {body} </{name}>"
