"""A verl parquet written the way Search-R1's data scripts write theirs.

Search-R1's ``scripts/data_process/nq_search.py`` (train/test) and ``qa_search_test_merge.py``
(one test file over several datasets) load FlashRAG rows with ``datasets``, strip each question
and end it with "?", and ``map`` every row (``with_indices=True``) to
``{data_source, prompt: [{role: "user", content: <instruction + question>}], ability,
reward_model: {style: "rule", ground_truth: {target: golden_answers}}, extra_info: {split,
index}}``; ``map`` keeps FlashRAG's own columns (``id``, ``question``, ``golden_answers``). The
datasets are concatenated and written with ``Dataset.to_parquet``. Only the instruction's
wording here is ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

INSTRUCTION = ("Think inside <think> </think>, look things up with <search> query </search>, "
               "and give the final answer inside <answer> </answer>. Question: {question}\n")


def search_r1_record(example: dict, index: int, *, data_source: str, split: str) -> dict:
    """One row as Search-R1's ``process_fn`` maps it (``example`` is a FlashRAG row)."""
    question = example["question"].strip()
    if not question.endswith("?"):
        question += "?"
    example["question"] = question
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": INSTRUCTION.format(question=question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": example["golden_answers"]}},
        "extra_info": {"split": split, "index": index},
    }


def write_search_r1_parquet(path, datasets_by_source: Mapping[str, Sequence[dict]], *,
                            split: str = "test") -> str:
    """Writes FlashRAG rows (``{id, question, golden_answers}``) of each data source as one
    Search-R1 parquet, sources concatenated in the given order; returns the path."""
    import datasets

    parts = []
    for source, rows in datasets_by_source.items():
        table = datasets.Dataset.from_list([dict(r) for r in rows])
        parts.append(table.map(
            lambda example, index, source=source: search_r1_record(
                example, index, data_source=source, split=split),
            with_indices=True))
    datasets.concatenate_datasets(parts).to_parquet(str(path))
    return str(path)
