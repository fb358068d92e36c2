"""Outcome and format rewards for SSRL / Search-R1 trajectories (SPEC §3).

Pure Python; no JAX. Which SPEC rule each function implements:

- ``normalize_answer``: §3 normalisation (SQuAD style).
- ``extract_answer``: §3 answer extraction (last ``<answer>`` block, dot-all, stripped).
- ``exact_match`` / ``f1`` / ``sub_exact_match``: §3 EM (any gold), F1 (max over golds),
  Sub-EM (gold contained in prediction).
- ``format_score`` (``ssrl_jax.rl.format_rules``): §3 format rules 1–6, SSRL's released
  rule by default, the project's stricter grammar as ``rule="strict"``.
- ``ssrl_reward``: §3 combined reward r = (1 − λ_f)·EM + λ_f·f.
- ``majority_answer`` / ``ttrl_rewards``: §3 TTRL variant (majority answer of the group
  stands in for the gold).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ssrl_jax.protocol import ANSWER_CLOSE, ANSWER_OPEN
from ssrl_jax.rl.format_rules import FORMAT_RULES, MAX_THINKS, format_score

__all__ = [
    "FORMAT_RULES",
    "MAX_THINKS",
    "REWARDS",
    "RewardParts",
    "exact_match",
    "extract_answer",
    "f1",
    "format_score",
    "majority_answer",
    "normalize_answer",
    "ssrl_reward",
    "sub_exact_match",
    "ttrl_rewards",
]

# The rewards by name (config grpo.reward): ssrl_reward against the golds, ttrl_rewards
# against the group's majority answer.
REWARDS: tuple[str, ...] = ("ssrl", "ttrl")
_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_ANSWER_RE = re.compile(f"{ANSWER_OPEN}(.*?){ANSWER_CLOSE}", re.DOTALL)

Golds = str | Sequence[str]


@dataclass(frozen=True)
class RewardParts:
    """Reward of one response and the metrics it was built from.

    ``answer`` is the extracted answer (None when the response has no ``<answer>`` block).
    """

    reward: float
    exact_match: float
    format_score: float
    f1: float
    sub_exact_match: float
    answer: str | None


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, articles → " ", collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def extract_answer(response: str) -> str | None:
    """Body of the last ``<answer>…</answer>`` (may span lines), stripped; None if absent."""
    matches = _ANSWER_RE.findall(response)
    if not matches:
        return None
    return matches[-1].strip()


def _gold_list(golds: Golds) -> list[str]:
    # A bare string is one gold, not a sequence of one-character golds.
    if isinstance(golds, str):
        return [golds]
    return [str(g) for g in golds]


def exact_match(pred: str | None, golds: Golds) -> float:
    """1.0 if normalised ``pred`` equals the normalised form of any gold, else 0.0."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _gold_list(golds)))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str | None, golds: Golds) -> float:
    """Token-overlap F1 between normalised ``pred`` and each gold, max over golds.

    No common token (including an empty prediction or gold) gives 0.0.
    """
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max((_token_f1(p, normalize_answer(g).split()) for g in _gold_list(golds)), default=0.0)


def sub_exact_match(pred: str | None, golds: Golds) -> float:
    """1.0 if the normalised form of any gold is a substring of normalised ``pred``.

    Golds whose normalisation is empty are skipped (the empty string is in every string).
    """
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    for g in _gold_list(golds):
        ng = normalize_answer(g)
        if ng and ng in p:
            return 1.0
    return 0.0


def _parts(response: str, golds: Golds, format_weight: float, format_rule: str) -> RewardParts:
    answer = extract_answer(response)
    em = exact_match(answer, golds)
    fmt = format_score(response, format_rule)
    return RewardParts(
        reward=(1.0 - format_weight) * em + format_weight * fmt,
        exact_match=em,
        format_score=fmt,
        f1=f1(answer, golds),
        sub_exact_match=sub_exact_match(answer, golds),
        answer=answer,
    )


def ssrl_reward(response: str, golds: Golds, format_weight: float = 0.1,
                format_rule: str = "ssrl") -> RewardParts:
    """SSRL reward r = (1 − λ)·EM + λ·f with λ = ``format_weight`` (SPEC §3).

    EM is of the extracted answer against ``golds`` (0 without an answer); f is
    ``format_score(response, format_rule)``. SSRL trains on 0.9·EM + 0.1·f, the default.
    """
    return _parts(response, golds, format_weight, format_rule)


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """Most frequent normalised answer, or None if there is no usable answer.

    None answers and answers whose normalisation is empty are not votes (an empty answer
    must not be able to win and reward itself). Ties go to the tied answer whose first
    occurrence in ``answers`` is earliest. Returns the normalised form.
    """
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = normalize_answer(a)
        if not key:
            continue
        counts[key] += 1
        first_seen.setdefault(key, i)
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], -first_seen[k]))


def ttrl_rewards(
    responses: Sequence[str], format_weight: float = 0.1, group_size: int | None = None,
    format_rule: str = "ssrl",
) -> list[RewardParts]:
    """TTRL rewards: each response is scored as ``ssrl_reward`` against its group's majority.

    ``responses`` is one group (``group_size=None``) or consecutive groups of ``group_size``
    samples of the same prompt. A group without a usable answer gives EM/F1/Sub-EM 0 to all
    its members (the format term still counts).
    """
    if group_size is None:
        group_size = max(len(responses), 1)
    if group_size < 1 or len(responses) % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide len(responses)={len(responses)}"
        )
    out: list[RewardParts] = []
    for start in range(0, len(responses), group_size):
        group = responses[start : start + group_size]
        majority = majority_answer([extract_answer(r) for r in group])
        golds: list[str] = [] if majority is None else [majority]
        out.extend(_parts(r, golds, format_weight, format_rule) for r in group)
    return out
