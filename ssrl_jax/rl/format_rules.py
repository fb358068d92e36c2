"""The format score f ∈ [0, 1] of a response (SPEC §3), under two named rules. Pure Python.

- ``"ssrl"`` (the default): SSRL's released rule (``format_reward`` in their verl fork),
  reproduced rule by rule so that it gives the same value on every string. It checks tags,
  bodies and counts, not nesting or balance, so some malformed strings get credit.
- ``"strict"``: this project's earlier variant. The same rules read as a grammar: tags must
  form a flat sequence of open/close pairs, and only tag-shaped ``<letter...>`` text counts as
  a tag (so ``3 < 5 and 7 > 2`` inside a think is fine). It differs from ``"ssrl"`` on a few
  per cent of sampled responses; keep it for runs that want the grammar enforced.

Both read ``response.strip()`` and price the shape the same way (rule 6 below).
"""

from __future__ import annotations

import re

from ssrl_jax.protocol import (ALLOWED_TAGS, ANSWER_CLOSE, INFORMATION_OPEN, PLACEHOLDERS,
                               SEARCH_OPEN, TAG_NAMES, THINK_OPEN)

__all__ = ["FORMAT_RULES", "MAX_THINKS", "format_score"]

FORMAT_RULES: tuple[str, ...] = ("ssrl", "strict")
MAX_THINKS = 8

# SSRL's notion of a tag: '<', one or more characters other than '>' (newlines and '<'
# included), '>'. Found left to right without overlap, so "a < b > c" holds the "tag" " b ".
_ANY_BRACKETED_RE = re.compile(r"<([^>]+)>")
_BODY_RES: dict[str, re.Pattern[str]] = {
    name: re.compile(f"<{name}>(.*?)</{name}>", re.DOTALL) for name in TAG_NAMES
}
_SEARCH_PAIR = ["/search", "information", "/information"]
# The strict rule's notion of a tag: '<', optional '/', a letter, then up to the next '>'.
_TAG_SHAPED_RE = re.compile(r"</?[A-Za-z][^<>]*>")


def _shape_price(thinks: int, searches: int) -> float:
    """Rule 6: min(0.5·T, 1) · min(T, S+1) / max(T, S+1); 0 when T > ``MAX_THINKS``."""
    if thinks > MAX_THINKS:
        return 0.0
    ratio = min(thinks, searches + 1) / max(thinks, searches + 1)
    return min(0.5 * thinks, 1.0) * ratio


def _has_placeholder(name: str, body: str) -> bool:
    return PLACEHOLDERS[name] in body.lower()


def _ssrl_format_score(text: str) -> float:
    """SSRL's released rule on the stripped text; see ``format_score``."""
    names = _ANY_BRACKETED_RE.findall(text)
    if not all(f"<{name}>" in ALLOWED_TAGS for name in names):
        return 0.0
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)) or len(names) < 4:
        return 0.0
    for name, pattern in _BODY_RES.items():
        for body in pattern.findall(text):
            if not body.strip() or _has_placeholder(name, body):
                return 0.0
            if name == "search" and "\n" in body:
                return 0.0
    if names[:2] != ["think", "/think"] or names[-2:] != ["answer", "/answer"]:
        return 0.0
    middle = names[2:-2]
    for i, name in enumerate(middle):
        if name == "search" and middle[i + 1 : i + 4] != _SEARCH_PAIR:
            return 0.0
    searches = text.count(SEARCH_OPEN)
    if searches != text.count(INFORMATION_OPEN):
        return 0.0
    return _shape_price(text.count(THINK_OPEN), searches)


def _strict_blocks(text: str) -> list[tuple[str, str]] | None:
    """``(tag_name, body)`` blocks of a flat tag sequence, or None if it is not one."""
    tags = list(_TAG_SHAPED_RE.finditer(text))
    if any(m.group(0) not in ALLOWED_TAGS for m in tags) or len(tags) % 2:
        return None
    blocks: list[tuple[str, str]] = []
    for open_m, close_m in zip(tags[0::2], tags[1::2]):
        open_tag, close_tag = open_m.group(0), close_m.group(0)
        if open_tag.startswith("</") or close_tag != "</" + open_tag[1:]:
            return None
        blocks.append((open_tag[1:-1], text[open_m.end() : close_m.start()]))
    return blocks


def _strict_body_ok(name: str, body: str) -> bool:
    stripped = body.strip()
    if not stripped or _has_placeholder(name, stripped):
        return False
    return name != "search" or len(stripped.splitlines()) == 1


def _strict_format_score(text: str) -> float:
    """The grammar reading of the rules on the stripped text; see ``format_score``."""
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    blocks = _strict_blocks(text)
    if blocks is None or len(blocks) < 2:
        return 0.0
    names = [name for name, _ in blocks]
    if names[0] != "think" or names[-1] != "answer":
        return 0.0
    if not all(_strict_body_ok(name, body) for name, body in blocks):
        return 0.0
    for i, name in enumerate(names):
        if name == "search" and names[i + 1 : i + 2] != ["information"]:
            return 0.0
    if names.count("search") != names.count("information"):
        return 0.0
    return _shape_price(names.count("think"), names.count("search"))


def format_score(response: str, rule: str = "ssrl") -> float:
    """Format score f ∈ [0, 1] of ``response.strip()`` under ``rule`` (``FORMAT_RULES``).

    ``rule="ssrl"`` (SSRL's released ``format_reward``): any failed check gives 0.0.

    1. Tags: every match of ``<([^>]+)>`` (left to right, no overlap; the inside may hold
       newlines and ``<``) is one of the eight tags ``<think>``, ``</think>``, ``<search>``,
       ``</search>``, ``<information>``, ``</information>``, ``<answer>``, ``</answer>``.
       As the text ends with ``>``, every ``<`` must open one of them or be directly
       followed by ``>``: ``3 < 5 and 7 > 2`` or ``x<5`` anywhere scores 0, ``5 > 3`` and
       ``<>`` do not.
    2. The text starts with ``<think>`` and ends with ``</answer>``.
    3. At least 4 tags; the first two are ``<think>``, ``</think>``, the last two
       ``<answer>``, ``</answer>``.
    4. Bodies: for each tag name, every non-greedy dot-all match of ``<name>(.*?)</name>``
       has a body that is not blank, does not contain the name's placeholder
       (``PLACEHOLDERS``, case-insensitive) and, for search, holds no ``"\\n"`` (checked
       before stripping, so ``<search>\\nq\\n</search>`` scores 0).
    5. Between the first two and the last two tags, every ``<search>`` is directly followed
       by ``</search>``, ``<information>``, ``</information>``; the text holds as many
       ``<search>`` as ``<information>``.
    6. Price: T = number of ``<think>``, S = number of ``<search>``:
       f = min(0.5·T, 1) · min(T, S+1) / max(T, S+1), and 0 when T > 8.

    Nothing else is checked: open/close counts of think and answer, nesting, stray closing
    tags and text between blocks are left to these rules (``<think>a</think><think>b
    <answer>c</answer>`` scores 0.5).

    ``rule="strict"``: tags are only tag-shaped text ``</?[A-Za-z][^<>]*>`` and must all be
    allowed and form a flat sequence of open/close pairs of the same name; the first block is
    think, the last answer; bodies as in 4 but the search body is one line after stripping;
    each search block is directly followed by an information block and the block counts
    match; price as in 6.
    """
    text = response.strip()
    if rule == "ssrl":
        return _ssrl_format_score(text)
    if rule == "strict":
        return _strict_format_score(text)
    raise ValueError(f"format rule must be one of {FORMAT_RULES}, got {rule!r}")
