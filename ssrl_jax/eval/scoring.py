"""What a self-search evaluation samples and how its trajectories are scored. No JAX.

Shared by the JAX evaluator (``ssrl_jax.eval.selfsearch``) and the GPU script
(``launch/eval_gpu.py``), so both score alike:

- ``EvalSettings``: the sampling plan (greedy pass, K samples, temperature, ...), validated.
- ``Completion``: one generated response (text, token count, why it ended).
- ``question_record``: one question's greedy and sampled trajectories, each scored with the
  SPEC §3 reward code (answer, EM, F1, sub-EM, format score).
- ``aggregate``: a benchmark's metrics: greedy EM/F1/sub-EM, the same averaged over samples,
  pass@k and maj@k for k = 1, 2, 4, ..., K, format score and mean response length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssrl_jax.data.prompts import PROMPT_MODES, PROMPT_SOURCES
from ssrl_jax.data.qa import QARow
from ssrl_jax.eval.metrics import maj_at_k, mean_pass_at_k, powers_of_two_up_to
from ssrl_jax.protocol import ANSWER_CLOSE
from ssrl_jax.rl.rewards import majority_answer, ssrl_reward
from ssrl_jax.token_ids import parse_token_ids

__all__ = [
    "CHAT_CHOICES",
    "Completion",
    "EvalSettings",
    "FINISH_REASONS",
    "SCORE_KEYS",
    "aggregate",
    "question_record",
    "resolve_chat",
    "score_completion",
]

FINISH_REASONS = ("eos", "stop_string", "length")
CHAT_CHOICES = ("auto", "true", "false")
# Per-trajectory scores that are averaged into the benchmark metrics.
SCORE_KEYS = ("em", "f1", "sub_em", "format_score", "num_tokens")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How each question is sampled. Field names match ``configs/eval_selfsearch.py``.

    greedy: also decode one greedy response per question (greedy EM).
    num_samples: K sampled responses per question (0: greedy only); pass@k / maj@k use them.
    temperature / top_p / top_k: sampling of the K responses (top_k 0 = off).
    max_new_tokens: response length cap, in tokens.
    batch_size: rows (question × sample) per sampler call.
    mode: prompt mode of ``ssrl_jax.data.prompts`` (``self_search`` or ``search_r1``): the
      wording of the prompts we build.
    prompt_source: ``dataset`` (a row's own chat messages, verl's ``prompt`` column, verbatim
      when it has them; else build one) or ``rebuild`` (always build).
    chat: ``auto`` (use the chat template when the tokenizer has one), ``true`` or ``false``.
    seed: sample j of the question at file row q uses a key made from (seed, q, j) only.
    stop_at_answer: end a response at its first ``</answer>``. Off by default: SSRL's
      protocol generates to EOS (or the cap) and scores the last ``<answer>``.
    suppressed_token_ids: ids never generated, greedy or sampled ("5,7" or a tuple; "" = none).
    """

    greedy: bool = True
    num_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 4096
    batch_size: int = 64
    mode: str = "self_search"
    chat: str = "auto"
    seed: int = 0
    stop_at_answer: bool = False
    prompt_source: str = "dataset"
    suppressed_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "suppressed_token_ids",
                               parse_token_ids(self.suppressed_token_ids))
        except ValueError as e:
            raise ValueError(f"suppressed_token_ids: {e}") from None

        def need(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{field}={getattr(self, field)!r}: must be {allowed}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        need(isinstance(self.greedy, bool), "greedy", "True or False")
        need(is_int(self.num_samples) and self.num_samples >= 0, "num_samples",
             "an integer >= 0 (0 = greedy only)")
        need(self.greedy or self.num_samples > 0, "num_samples",
             ">= 1 when greedy=False (nothing would be sampled)")
        need(isinstance(self.temperature, (int, float)) and self.temperature > 0, "temperature",
             "a number > 0 (the greedy pass is the separate 'greedy' field)")
        need(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p",
             "a number in (0, 1]")
        need(is_int(self.top_k) and self.top_k >= 0, "top_k", "an integer >= 0 (0 = off)")
        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens",
             "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(self.mode in PROMPT_MODES, "mode", f"one of {PROMPT_MODES}")
        need(self.chat in CHAT_CHOICES, "chat", f"one of {CHAT_CHOICES}")
        need(is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0")
        need(isinstance(self.stop_at_answer, bool), "stop_at_answer", "True or False")
        need(self.prompt_source in PROMPT_SOURCES, "prompt_source", f"one of {PROMPT_SOURCES}")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (ANSWER_CLOSE,) if self.stop_at_answer else ()

    @property
    def ks(self) -> list[int]:
        """The k grid of pass@k / maj@k: 1, 2, 4, ... up to K (and K itself)."""
        return powers_of_two_up_to(self.num_samples) if self.num_samples else []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_chat(chat: str, tokenizer: Any) -> bool:
    """``chat`` setting → whether prompts go through the tokenizer's chat template."""
    if chat not in CHAT_CHOICES:
        raise ValueError(f"chat={chat!r}: must be one of {CHAT_CHOICES}")
    if chat == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return chat == "true"


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated response: decoded text (special tokens dropped), the number of tokens
    the model wrote (EOS included) and why it ended (one of ``FINISH_REASONS``)."""

    text: str
    num_tokens: int
    finish_reason: str

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, "
                             f"got {self.finish_reason!r}")


def score_completion(completion: Completion, golds: Sequence[str]) -> dict[str, Any]:
    """The JSON record of one trajectory: the response, its extracted answer and scores.

    Keys: response, answer (None without an ``<answer>`` block), em, f1, sub_em,
    format_score (SPEC §3), num_tokens, finish_reason.
    """
    parts = ssrl_reward(completion.text, golds)
    return {
        "response": completion.text,
        "answer": parts.answer,
        "em": parts.exact_match,
        "f1": parts.f1,
        "sub_em": parts.sub_exact_match,
        "format_score": parts.format_score,
        "num_tokens": int(completion.num_tokens),
        "finish_reason": completion.finish_reason,
    }


def question_record(row: QARow, greedy: Completion | None,
                    samples: Sequence[Completion]) -> dict[str, Any]:
    """One question's line of ``<benchmark>.jsonl``.

    Keys: id, question, golden_answers, data_source, greedy (a ``score_completion`` record or
    None), samples (list of records, sample order), num_correct (samples with EM 1),
    majority_answer (normalised majority of all samples' answers, ties to the earliest).
    """
    golds = list(row.golden_answers)
    scored = [score_completion(c, golds) for c in samples]
    return {
        "id": row.id,
        "question": row.question,
        "golden_answers": golds,
        "data_source": row.data_source,
        "greedy": None if greedy is None else score_completion(greedy, golds),
        "samples": scored,
        "num_correct": int(sum(s["em"] for s in scored)),
        "majority_answer": majority_answer([s["answer"] for s in scored]) if scored else None,
    }


def _means(trajectories: list[dict[str, Any]]) -> dict[str, float]:
    return {key: float(np.mean([t[key] for t in trajectories])) for key in SCORE_KEYS}


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A benchmark's metrics from its ``question_record`` lines (fractions in [0, 1]).

    Returns ``{"num_questions", "num_samples" (K), "ks", "greedy": {em, f1, sub_em,
    format_score, num_tokens} or None, "sampled": the same averaged over all K·N samples or
    None, "pass@k": {"1": ..., "2": ..., ...}, "maj@k": {...}}``. JSON keys of k are strings.
    pass@k is the unbiased estimator averaged over questions; maj@k votes over each question's
    first k samples (ties: the answer seen first wins; see ``ssrl_jax.eval.metrics``).
    """
    if not records:
        raise ValueError("aggregate needs at least one question record")
    num_samples = {len(r["samples"]) for r in records}
    if len(num_samples) != 1:
        raise ValueError(f"every question needs the same number of samples, got {num_samples}")
    k_max = num_samples.pop()
    greedy = [r["greedy"] for r in records]
    if any(g is None for g in greedy) and not all(g is None for g in greedy):
        raise ValueError("either every question has a greedy record or none has")
    out: dict[str, Any] = {
        "num_questions": len(records),
        "num_samples": k_max,
        "ks": powers_of_two_up_to(k_max) if k_max else [],
        "greedy": None if greedy[0] is None else _means(greedy),
        "sampled": None,
        "pass@k": {},
        "maj@k": {},
    }
    if k_max:
        out["sampled"] = _means([s for r in records for s in r["samples"]])
        correct = np.array([[s["em"] == 1.0 for s in r["samples"]] for r in records])
        answers = [[s["answer"] for s in r["samples"]] for r in records]
        golds = [r["golden_answers"] for r in records]
        out["pass@k"] = {str(k): v for k, v in mean_pass_at_k(correct, out["ks"]).items()}
        out["maj@k"] = {str(k): v for k, v in maj_at_k(answers, golds, out["ks"]).items()}
    return out
