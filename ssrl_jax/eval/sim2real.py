"""Sim2Real evaluation (SPEC §7): the same questions under each rollout mode, side by side.

    policy = SearchPolicy(max_turns=2, first_k=1)
    results = evaluate_modes(sampler, tokenizer, rows, settings, modes=MODES, policy=policy,
                             client=client)
    print(format_modes_table("NQ", {m: r.metrics for m, r in results.items()}))

Each mode runs the compiled search rollout, the train step's program
(`ssrl_jax.search.sampler_search.SamplerSearch`; ``self``: one pass, the model writes
every ``<information>``; ``real``: the retriever answers every search up to ``max_turns``;
``first_k_real``: the first K; ``entropy_guided``: the first, then only when the query
entropy rose). One response per question: greedy when ``settings.greedy``, else one sample
drawn with the key of sample 0 (as in `selfsearch.sample_keys`). A response is scored on its
whole text (policy-written and injected) with the SPEC §3 reward code.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssrl_jax.data.qa import QARow
from ssrl_jax.eval.scoring import Completion, EvalSettings, score_completion
from ssrl_jax.search.rollout import MODES, SearchPolicy
from ssrl_jax.search.sampler_search import SamplerSearch

__all__ = ["ModeResult", "evaluate_modes", "format_modes_table", "mode_label", "parse_modes"]

log = logging.getLogger(__name__)
_FINISH = {0: "length", 1: "eos", 2: "stop_string"}


def parse_modes(text: str) -> list[str]:
    """'self,real' -> ['self', 'real'] (order kept, duplicates dropped); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected a comma-separated string of {MODES}")
    modes = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {MODES}")
    return modes


def mode_label(mode: str, policy: SearchPolicy) -> str:
    return f"first_{policy.first_k}_real" if mode == "first_k_real" else mode


@dataclasses.dataclass
class ModeResult:
    records: list[dict[str, Any]]
    metrics: dict[str, Any]


def _mode_metrics(records: Sequence[dict[str, Any]], decoding: str) -> dict[str, Any]:
    def mean(key):
        return float(np.mean([r[key] for r in records]))

    return {"num_questions": len(records), "decoding": decoding, "em": mean("em"),
            "f1": mean("f1"), "sub_em": mean("sub_em"), "format_score": mean("format_score"),
            "num_tokens": mean("num_tokens"),
            "real_searches_per_question": mean("real_searches"),
            "self_searches_per_question": mean("self_searches"),
            "failed_searches_per_question": mean("failed_searches")}


def evaluate_modes(sampler: Any, tokenizer: Any, rows: Sequence[QARow], settings: EvalSettings,
                   *, modes: Sequence[str], policy: SearchPolicy, client: Any,
                   row_indices: Sequence[int] | None = None, label: str = ""
                   ) -> dict[str, ModeResult]:
    """{mode: ModeResult(records, metrics)}; `policy` gives everything but the mode.

    records: per question, ``score_completion`` keys plus id, question, golden_answers,
    real_searches, self_searches, failed_searches and queries ([{query, entropy, outcome}]).
    """
    from ssrl_jax.eval.selfsearch import eval_prompt_ids, sample_keys
    from ssrl_jax.sampler import SamplingConfig, TokenSource, row_outputs

    if not rows:
        raise ValueError("evaluate_modes needs at least one row")
    indices = list(range(len(rows))) if row_indices is None else [int(i) for i in row_indices]
    prompts = eval_prompt_ids(rows, settings, tokenizer, label=label)
    if settings.greedy:
        sampling = SamplingConfig(temperature=0.0,
                                  suppressed_token_ids=settings.suppressed_token_ids)
        keys, decoding = None, "greedy"
    else:
        sampling = SamplingConfig(temperature=settings.temperature, top_p=settings.top_p,
                                  top_k=settings.top_k,
                                  suppressed_token_ids=settings.suppressed_token_ids)
        keys = sample_keys(settings.seed, indices, [0] * len(rows))
        decoding = "sampled"

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    per_call = min(settings.batch_size, len(rows))
    results = {}
    for mode in modes:
        search = SamplerSearch(sampler, policy=dataclasses.replace(policy, mode=mode),
                               client=client, encode=encode,
                               max_new_tokens=settings.max_new_tokens, sampling=sampling,
                               stop_strings=settings.stop_strings)
        records: list[dict[str, Any]] = []
        started = time.perf_counter()
        for start in range(0, len(rows), per_call):
            stop = min(start + per_call, len(rows))
            fill = per_call - (stop - start)   # equal batches: one program per bucket
            batch = list(prompts[start:stop]) + [prompts[start]] * fill
            batch_keys = None if keys is None else keys[
                np.concatenate([np.arange(start, stop), np.full(fill, start)])]
            out = search(batch, keys=batch_keys, seed=settings.seed)
            for i, row_out in enumerate(row_outputs(out.state)[:stop - start]):
                q = rows[start + i]
                keep = (row_out.sources == TokenSource.POLICY) | (
                    row_out.sources == TokenSource.INJECTED)
                completion = Completion(
                    text=tokenizer.decode(row_out.tokens[keep].tolist(),
                                          skip_special_tokens=True),
                    num_tokens=int((row_out.sources == TokenSource.POLICY).sum()),
                    finish_reason=_FINISH[int(row_out.finish_reason)])
                records.append({
                    "id": q.id, "question": q.question, "golden_answers": list(q.golden_answers),
                    **score_completion(completion, list(q.golden_answers)),
                    "real_searches": int(out.real_searches[i]),
                    "self_searches": int(out.self_searches[i]),
                    "failed_searches": int(out.failed_searches[i]),
                    "queries": [dataclasses.asdict(r) for r in out.queries[i]]})
        log.info("%s %s: %d rows (%.1fs)", label, mode, len(rows), time.perf_counter() - started)
        results[mode] = ModeResult(records, _mode_metrics(records, decoding))
    return results


def format_modes_table(title: str, metrics: dict[str, dict[str, Any]],
                       labels: dict[str, str] | None = None) -> str:
    """One column per mode: EM, F1 (%), real / self / failed searches per question."""
    labels = labels or {}
    modes = list(metrics)
    first = next(iter(metrics.values()))
    head = f"{title}: Sim2Real ({first['num_questions']} questions, {first['decoding']})"
    width = max(10, *(len(labels.get(m, m)) + 2 for m in modes))
    lines = [head, "-" * len(head),
             f"{'':<18}" + "".join(f"{labels.get(m, m):>{width}}" for m in modes)]
    for name, key, pct in (("EM", "em", True), ("F1", "f1", True),
                           ("real searches/q", "real_searches_per_question", False),
                           ("self searches/q", "self_searches_per_question", False),
                           ("failed searches/q", "failed_searches_per_question", False)):
        cells = [(f"{100 * metrics[m][key]:.1f}" if pct else f"{metrics[m][key]:.2f}")
                 for m in modes]
        lines.append(f"{name:<18}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)
