"""Gold answers as fixed-size byte arrays: how a batch carries them through the train step
(plain arrays, so every host feeds its own rows and the scoring callback decodes its shard)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def encode_golds(golds: Sequence[Sequence[str]], max_golds: int, max_bytes: int) -> np.ndarray:
    """Gold answer lists -> uint8 [B, max_golds, max_bytes], zero padded.

    A gold longer than `max_bytes` or a row with more golds is an error naming
    the row, since truncating a gold silently would change the reward.
    """
    out = np.zeros((len(golds), max_golds, max_bytes), np.uint8)
    for row, answers in enumerate(golds):
        if len(answers) > max_golds:
            raise ValueError(f"batch row {row}: {len(answers)} golden answers exceed "
                             f"max_golds={max_golds}")
        for j, answer in enumerate(answers):
            data = answer.encode("utf-8")
            if len(data) > max_bytes:
                raise ValueError(f"batch row {row}: golden answer {answer!r} is {len(data)} bytes, "
                                 f"more than max_gold_bytes={max_bytes}")
            out[row, j, :len(data)] = np.frombuffer(data, np.uint8)
    return out


def decode_golds(encoded: np.ndarray) -> list[str]:
    """uint8 [G, L] -> the non-empty golds of one row."""
    return [bytes(g).rstrip(b"\0").decode("utf-8") for g in encoded if g.any()]
