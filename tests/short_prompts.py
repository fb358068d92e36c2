"""QA files whose rows carry a short prompt of their own (verl's ``prompt`` column).

Training tests run tiny models for which a prompt's wording does not matter but its length
does: our instruction is about 450 tokens of the quickstart tokenizer (prompts padded to 512),
and the prefill and the update over 512-token prompts were most of the suite's time. With
``data.prompt_source = "dataset"`` (the default) a row's one message is rendered verbatim
(``prompts.dataset_prompt_ids``): ``Question: ...`` and the base-model cue fit in 64 tokens.
The prompt ends with our base prompt's cue, so a bigram test model (tests/search/search_model.py)
starts its trajectory from the same last token as under our prompt.
"""

from __future__ import annotations

import json
import pathlib

from ssrl_jax.data.prompts import BASE_CUE, dataset_prompt_ids
from ssrl_jax.data.qa import sample_data_path


def short_prompt(question: str) -> list[dict[str, str]]:
    """One user message: the question and the cue our base-model prompts end with."""
    return [{"role": "user", "content": f"Question: {question}\n{BASE_CUE}"}]


def short_prompt_ids(question: str, tokenizer) -> list[int]:
    """The ids of ``short_prompt(question)`` as training renders it for a base model."""
    message = short_prompt(question)[0]
    return dataset_prompt_ids([(message["role"], message["content"])], tokenizer=tokenizer,
                              chat=False)


def write_short_prompt_qa(path: pathlib.Path, rows: list[dict] | None = None) -> pathlib.Path:
    """Writes ``rows`` (default: the bundled sample QA rows) as jsonl, each with a short
    ``prompt``; returns the path."""
    if rows is None:
        rows = [json.loads(line) for line in sample_data_path().read_text().splitlines()]
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps({**row, "prompt": short_prompt(row["question"])}) + "\n"
                            for row in rows))
    return path
