"""Retrieval corpora: reading and validating a corpus jsonl, and the document store of an index.

Corpus jsonl (Search-R1 / FlashRAG layout): one JSON object per line,
``{"id": str, "contents": "Title\\ntext"}``; the first line of ``contents`` is the title (the
2018 Wikipedia dump writes it in double quotes, ``"\\"Title\\"\\ntext"``, and it is kept as
written). Other keys are ignored; blank lines are skipped. Every bad row raises
``CorpusError`` naming the file, the 1-based line number and the field.

``DocStore`` is the copy of the corpus inside an index directory: ``documents.jsonl`` (rows
``{"id", "contents"}`` in index order) and ``offsets.npy`` (int64 byte offsets, shape
``[N + 1]``), so document ``i`` is one ``os.pread`` away and a large corpus is not held in memory.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np

from ssrl_jax.cli_errors import UserError, utf8_lines

__all__ = ["CorpusError", "DocStore", "iter_corpus", "read_corpus", "split_title"]

DOCUMENTS_FILE = "documents.jsonl"
OFFSETS_FILE = "offsets.npy"
_REPR_LIMIT = 60


class CorpusError(UserError, ValueError):
    """A corpus row that cannot be used; the message names the file, the line and the field."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _check_row(row: object, where: str) -> dict[str, str]:
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for field in ("id", "contents"):
        if field not in row:
            raise CorpusError(f"{where}: field {field!r} is missing")
        value = row[field]
        if not isinstance(value, str):
            raise CorpusError(
                f"{where}: field {field!r} must be a string, got {type(value).__name__} {_short(value)}"
            )
        if not value.strip():
            raise CorpusError(f"{where}: field {field!r} is empty")
    return {"id": row["id"], "contents": row["contents"]}


def iter_corpus(path: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Yields the validated rows ``{"id": str, "contents": str}`` of a corpus jsonl, in order.

    Raises ``CorpusError`` (file, line, field) on invalid JSON, a missing / non-string / empty
    ``id`` or ``contents``, or an ``id`` seen on an earlier line.
    """
    path = pathlib.Path(path)
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for line_no, line in utf8_lines(f, str(path), error=CorpusError):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            doc = _check_row(row, where)
            first = seen.setdefault(doc["id"], line_no)
            if first != line_no:
                raise CorpusError(f"{where}: field 'id': duplicate id {_short(doc['id'])} (first on line {first})")
            yield doc


def read_corpus(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of a corpus jsonl (see ``iter_corpus``); raises ``CorpusError`` if it has none."""
    docs = list(iter_corpus(path))
    if not docs:
        raise CorpusError(f"{path}: the corpus has no documents")
    return docs


def split_title(contents: str) -> tuple[str, str]:
    """``"Title\\ntext"`` → ``("Title", "text")``: the first line and the rest (as Search-R1 splits)."""
    title, _, text = contents.partition("\n")
    return title, text


class DocStore:
    """Documents of an index by position: ``store[i] -> {"id": str, "contents": str}``.

    Reads are ``os.pread`` calls on one file descriptor, safe from many threads at once.
    """

    def __init__(self, directory: str | os.PathLike):
        self._fd = -1
        directory = pathlib.Path(directory)
        self._offsets = np.load(directory / OFFSETS_FILE)
        self._fd = os.open(directory / DOCUMENTS_FILE, os.O_RDONLY)

    @staticmethod
    def write(directory: str | os.PathLike, docs: Iterable[dict[str, str]]) -> int:
        """Writes ``documents.jsonl`` and ``offsets.npy`` into ``directory``; returns the count."""
        directory = pathlib.Path(directory)
        offsets = [0]
        with (directory / DOCUMENTS_FILE).open("wb") as f:
            for doc in docs:
                line = json.dumps({"id": doc["id"], "contents": doc["contents"]}, ensure_ascii=False)
                f.write(line.encode("utf-8") + b"\n")
                offsets.append(f.tell())
        np.save(directory / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
        return len(offsets) - 1

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> dict[str, str]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range [0, {len(self)})")
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return json.loads(os.pread(self._fd, end - start, start))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()
