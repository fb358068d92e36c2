"""From QA files to the arrays a train step takes.

At start-up every host reads all training rows, tokenises every distinct prompt
once and fixes one prompt length for the whole run (so the step compiles once and
all hosts agree on shapes). A row's prompt is its file's own chat messages when it
has them and ``data.prompt_source`` is ``dataset``, else ours built from the question.
Each step every host sees the same global batch of rows and turns the rows its devices
hold (read off the batch sharding) into left-padded ids and byte-encoded golds, the
shards of the global arrays.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ssrl_jax.data.golds import encode_golds
from ssrl_jax.data.pipeline import QABatch, mix_datasets
from ssrl_jax.data.prompts import prompt_source_summary, row_prompt_ids, uses_dataset_prompt
from ssrl_jax.data.qa import SAMPLE_DATA, DataError, QARow, read_qa, sample_data_path
from ssrl_jax.sampler.buckets import bucket_length, left_pad
from ssrl_jax.sharding import ShardingRules

log = logging.getLogger(__name__)


def read_training_rows(files: Sequence[str], weights: Mapping[str, float], *,
                       seed: int) -> list[QARow]:
    """All rows of `files` (`sample` = the bundled file), mixed by `data_source` weights.

    Without weights the files are concatenated (every row once, in file order).
    """
    rows: list[QARow] = []
    for spec in files:
        rows += read_qa(sample_data_path() if spec == SAMPLE_DATA else spec)
    if not weights:
        return rows
    by_source: dict[str, list[QARow]] = {}
    for row in rows:
        by_source.setdefault(row.data_source, []).append(row)
    unknown = sorted(set(weights) - set(by_source))
    if unknown:
        raise DataError(f"data.weights names {unknown}, but the training files hold the "
                        f"data sources {sorted(by_source)}")
    missing = sorted(set(by_source) - set(weights))
    if missing:
        raise DataError(f"data.weights gives no weight to the data sources {missing}; give "
                        "each a weight (0 leaves it out)")
    return mix_datasets(by_source, weights, seed=seed)


def check_golds(rows: Sequence[QARow], *, max_golds: int, max_gold_bytes: int) -> None:
    """Every row's golds fit the fixed-size gold arrays, else an error naming the row."""
    for row in rows:
        if len(row.golden_answers) > max_golds:
            raise DataError(f"row id={row.id!r} ({row.data_source}): {len(row.golden_answers)} "
                            f"golden_answers exceed data.max_golds={max_golds}; raise it")
        for gold in row.golden_answers:
            if len(gold.encode("utf-8")) > max_gold_bytes:
                raise DataError(f"row id={row.id!r} ({row.data_source}): golden answer "
                                f"{gold[:60]!r} exceeds data.max_gold_bytes={max_gold_bytes}; "
                                "raise it")


@dataclasses.dataclass(frozen=True)
class PromptTable:
    """Token ids of every training prompt and the run's prompt length.

    ``ids`` is keyed by ``key(question, prompt)``: the row's chat messages when they are
    used (``source="dataset"``), else its question. ``summary`` says which prompts were used.
    """

    ids: Mapping[Any, tuple[int, ...]]
    length: int
    source: str = "dataset"
    summary: str = ""

    def key(self, question: str, prompt: Any = None) -> Any:
        return prompt if uses_dataset_prompt(prompt, self.source) else question

    def row_ids(self, batch: Mapping[str, Sequence[Any]]) -> list[tuple[int, ...]]:
        """The prompt ids of each row of a batch (``question`` and optional ``prompt`` lists)."""
        prompts = batch.get("prompt") or [None] * len(batch["question"])
        return [self.ids[self.key(q, p)] for q, p in zip(batch["question"], prompts)]

    def batch(self, questions: Sequence[str], pad_id: int,
              prompts: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 [B, length], valid bool [B, length]), left-padded."""
        rows = {"question": questions, "prompt": prompts}
        return left_pad(self.row_ids(rows), self.length, pad_id)


def tokenize_prompts(rows: Sequence[QARow], tokenizer: Any, *, mode: str, chat: bool,
                     max_prompt_tokens: int, source: str = "dataset"
                     ) -> tuple[list[QARow], PromptTable]:
    """Tokenises each distinct prompt; drops rows over `max_prompt_tokens`.

    A row's prompt is ``prompts.row_prompt_ids`` (its own chat messages when ``source`` is
    ``"dataset"`` and it has them, else ours in ``mode``); the choice is logged and kept
    as ``PromptTable.summary``. Dropped rows are counted in a warning (as verl's over-long
    prompt filter does); if every row is too long that is an error.
    """
    table = PromptTable({}, 0, source)
    ids: dict[Any, tuple[int, ...]] = {}
    for row in rows:
        key = table.key(row.question, row.prompt)
        if key not in ids:
            ids[key] = tuple(row_prompt_ids(row.question, row.prompt, mode=mode, source=source,
                                            tokenizer=tokenizer, chat=chat))
    summary = prompt_source_summary([row.prompt for row in rows], source=source, mode=mode)
    log.info("%s", summary)

    def size(row: QARow) -> int:
        return len(ids[table.key(row.question, row.prompt)])

    kept = [row for row in rows if size(row) <= max_prompt_tokens]
    if len(kept) < len(rows):
        too_long = [row.id for row in rows if size(row) > max_prompt_tokens]
        log.warning("dropped %d of %d training rows whose prompts exceed "
                    "data.max_prompt_tokens=%d (e.g. ids %s)", len(too_long), len(rows),
                    max_prompt_tokens, too_long[:5])
    if not kept:
        raise DataError(f"every training prompt exceeds data.max_prompt_tokens="
                        f"{max_prompt_tokens} (shortest: {min(map(len, ids.values()))} tokens)")
    length = min(bucket_length(max(map(size, kept))), max_prompt_tokens)
    used = {table.key(row.question, row.prompt) for row in kept}
    return kept, PromptTable({k: v for k, v in ids.items() if k in used}, length, source,
                             summary)


def process_rows(sharding: jax.sharding.Sharding, num_rows: int,
                 process_index: int) -> np.ndarray:
    """Sorted indices of the rows of a batch-major array that `process_index`'s devices hold.

    Read off the sharding itself (whatever devices the topology gave this host, e.g. two
    separate blocks of the batch), never from a formula that assumes a layout.
    """
    held: set[int] = set()
    for device, index in sharding.devices_indices_map((num_rows,)).items():
        if device.process_index == process_index:
            held.update(range(*index[0].indices(num_rows)))
    return np.asarray(sorted(held), np.int64)


def global_array(host_data: np.ndarray, host_rows: np.ndarray, global_shape: tuple[int, ...],
                 sharding: jax.sharding.Sharding) -> jax.Array:
    """A global batch-major array built from this host's rows (`host_rows` of the batch).

    host_data: [len(host_rows), ...], row i holding global row host_rows[i].
    """
    position = np.full(global_shape[0], -1, np.int64)
    position[host_rows] = np.arange(len(host_rows))

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        rows = position[np.arange(global_shape[0])[index[0]]]
        if (rows < 0).any():
            raise RuntimeError(f"the sharding asks this host for batch rows it does not hold "
                               f"(held: {host_rows.tolist()})")
        return host_data[rows][(slice(None), *index[1:])]

    return jax.make_array_from_callback(global_shape, sharding, shard)


def step_batch(batch: QABatch, prompts: PromptTable, *, pad_id: int, max_golds: int,
               max_gold_bytes: int, mesh: jax.sharding.Mesh,
               rules: ShardingRules) -> dict[str, jax.Array]:
    """The global `QABatch` of a step -> the train step's batch (global arrays sharded over
    `batch`). This host reads and encodes only the rows its devices hold."""
    num = len(batch["question"])
    ids_shape = (num, prompts.length)
    golds_shape = (num, max_golds, max_gold_bytes)
    row_sharding = rules.sharding(("batch", None), ids_shape, mesh)
    gold_sharding = rules.sharding(("batch", None, None), golds_shape, mesh)
    mine = process_rows(row_sharding, num, jax.process_index())
    messages = batch.get("prompt")
    ids, valid = prompts.batch([batch["question"][i] for i in mine], pad_id,
                               None if messages is None else [messages[i] for i in mine])
    golds = encode_golds([batch["golden_answers"][i] for i in mine], max_golds, max_gold_bytes)
    return {"prompt_ids": global_array(ids, mine, ids_shape, row_sharding),
            "prompt_valid": global_array(valid, mine, ids_shape, row_sharding),
            "golds": global_array(golds, mine, golds_shape, gold_sharding)}
