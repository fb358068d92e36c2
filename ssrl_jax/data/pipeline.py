"""The grain input pipeline for QA rows: mixing, shuffling, batching.

``make_qa_iterator`` is what training calls, the same on every host:

    rows --shuffle (seed; a new order each epoch)--> repeat(num_epochs) --> batch(batch_size)

Every host walks the same **global** batches; which rows of a batch a host feeds to the
device mesh is read off the batch sharding (``train_batches.step_batch``), so the run is the
same on any number of hosts and resumes on another. Batches are dicts of Python lists
(``golden_answers`` vary in length per row). The iterator's position is ``it.get_state()`` (a
small JSON-serialisable dict) and is restored with ``it.set_state(state)`` on an iterator built
with the same arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from ssrl_jax.data.qa import QARow

__all__ = [
    "QABatch",
    "collate_rows",
    "make_qa_dataset",
    "make_qa_iterator",
    "mix_datasets",
    "num_batches",
]

# {"id": [str], "question": [str], "golden_answers": [tuple[str, ...]], "data_source": [str],
#  "prompt": [((role, content), ...) or None]}
QABatch = dict[str, list[Any]]
_FIELDS = ("id", "question", "golden_answers", "data_source", "prompt")


def _derive_seed(seed: int, *salt: int) -> int:
    """An independent 32-bit seed for each (seed, salt...) so streams do not share orders."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def mix_datasets(
    sources: Mapping[str, Sequence[QARow]],
    weights: Mapping[str, float] | None = None,
    *,
    seed: int,
    num_rows: int | None = None,
) -> list[QARow]:
    """Interleave several row lists by weight, deterministically (grain ``MapDataset.mix``).

    Args:
      sources: name -> rows, e.g. ``{"nq": nq_rows, "hotpotqa": hotpot_rows}``.
      weights: name -> weight (any positive scale; they are normalised). The keys must equal
        those of ``sources``; a weight of 0 leaves that source out. ``None`` concatenates the
        sources (in name order) with their natural proportions, every row once.
      seed: each source is shuffled with its own seed derived from this one before mixing, so
        a truncated mixture drops random rows, not the tail of a file.
      num_rows: the mixture's length. ``None``: the longest mixture in which no row repeats
        (the source that runs out first, relative to its weight, ends it). A larger value
        repeats sources as needed, reshuffling each pass (up-sampling a small source).

    Returns:
      The mixed rows. Position ``k`` comes from the source whose share is due at ``k`` (grain's
      exact interleaving), so any window of the result honours the weights up to rounding.
    """
    _check_seed(seed)
    if not sources:
        raise ValueError("mix_datasets needs at least one source")
    names = sorted(sources)
    for name in names:
        if len(sources[name]) == 0:
            raise ValueError(f"source {name!r} has no rows")
    if num_rows is not None and (not isinstance(num_rows, int) or num_rows < 1):
        raise ValueError(f"num_rows must be a positive integer or None, got {num_rows!r}")
    if weights is None:
        rows = [row for name in names for row in sources[name]]
        return rows if num_rows is None else _take_cycled(rows, num_rows)

    if set(weights) != set(names):
        raise ValueError(
            f"weights must name exactly the sources {names}; got {sorted(weights)}"
        )
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weights[{name!r}] must be a finite number >= 0, got {weight!r}")
    used = [name for name in names if weights[name] > 0]
    if not used:
        raise ValueError(f"at least one weight must be positive, got {dict(weights)}")

    parts = []
    for i, name in enumerate(names):
        if name not in used:
            continue
        part = grain.MapDataset.source(list(sources[name])).shuffle(seed=_derive_seed(seed, i))
        parts.append(part if num_rows is None else part.repeat())
    mixed = grain.MapDataset.mix(parts, weights=[float(weights[name]) for name in used])
    if num_rows is not None:
        mixed = mixed[:num_rows]
    return list(mixed)


def _take_cycled(rows: Sequence[QARow], n: int) -> list[QARow]:
    return [rows[i % len(rows)] for i in range(n)]


def collate_rows(rows: Sequence[QARow]) -> QABatch:
    """Rows -> a batch: one list per field, in row order."""
    return {field: [getattr(row, field) for row in rows] for field in _FIELDS}


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def num_batches(
    num_rows: int, *, batch_size: int, num_epochs: int = 1, drop_remainder: bool = True,
) -> int:
    """How many batches the iterator yields for ``num_epochs`` passes over the rows."""
    _check_batch_size(batch_size)
    total = num_rows * num_epochs
    return total // batch_size if drop_remainder else -(-total // batch_size)


def make_qa_dataset(
    rows: Sequence[QARow],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
) -> grain.MapDataset:
    """The global batches as a grain ``MapDataset`` (see the module docstring for the order).

    Args:
      rows: all rows (identical on every host).
      batch_size: the **global** batch.
      seed: fixes every epoch's order.
      shuffle: ``False`` keeps ``rows`` order.
      num_epochs: passes over the rows; ``None`` repeats forever. Batches run across epoch
        boundaries; only the very end of a finite run can leave a remainder.
      drop_remainder: drop a final partial batch (keep it ``True`` for training: fixed shapes).
    """
    _check_seed(seed)
    _check_batch_size(batch_size)
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
        raise ValueError(f"num_epochs must be a positive integer or None, got {num_epochs!r}")
    if not rows:
        raise ValueError("no rows to batch")
    if num_epochs is not None and drop_remainder and len(rows) * num_epochs < batch_size:
        raise ValueError(
            f"{len(rows)} rows x {num_epochs} epochs are fewer than a batch of {batch_size}: "
            "no batch would be produced"
        )

    ds = grain.MapDataset.source(list(rows))
    if shuffle:
        # Two seeded shuffles: the exact order earlier (per-host) versions gave one host, so
        # documented runs and saved iterator positions stay valid.
        ds = ds.shuffle(seed=_derive_seed(seed, 0)).shuffle(seed=_derive_seed(seed, 1, 0))
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate_rows)


def make_qa_iterator(
    rows: Sequence[QARow],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
) -> grain.DatasetIterator:
    """A checkpointable iterator over the global batches (``QABatch`` dicts).

    Arguments as in ``make_qa_dataset``; ``num_threads`` / ``prefetch_buffer_size`` set grain's
    background reading (``num_threads=0`` reads on the calling thread). The order does not depend
    on them. Save ``it.get_state()`` with the checkpoint and call ``it.set_state(state)`` on a
    fresh iterator built with the same arguments to resume exactly.
    """
    ds = make_qa_dataset(
        rows, batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
        drop_remainder=drop_remainder,
    )
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return iter(ds.to_iter_dataset(options))
