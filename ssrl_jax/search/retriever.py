"""Retrievers over an index directory (``ssrl_jax.search.index``): BM25 (bm25s) and dense (faiss).

Both answer ``search(queries: list[str], topk: int) -> list[list[Hit]]``: for each query, at
most ``topk`` hits, best first. ``bm25s``, ``faiss`` and ``sentence_transformers`` are imported on
first use, so the client side of ``ssrl_jax.search`` needs none of them.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ssrl_jax.search.corpus import DocStore, split_title
from ssrl_jax.search.index import (BM25_DIR, DENSE_FILE, bm25_tokenize, load_dense_deps,
                                   read_manifest)

__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "Hit",
    "Retriever",
    "load_retriever",
]


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved document: its corpus ``id``, ``contents`` (``"Title\\ntext"``) and score
    (higher is better; ``None`` when the retriever did not return one)."""

    id: str
    contents: str
    score: float | None = None

    @property
    def title(self) -> str:
        return split_title(self.contents)[0]

    @property
    def text(self) -> str:
        return split_title(self.contents)[1]

    def document(self) -> dict[str, str]:
        """The Search-R1 ``document`` object: ``{"id": ..., "contents": ...}``."""
        return {"id": self.id, "contents": self.contents}


@runtime_checkable
class Retriever(Protocol):
    """What the server needs: a kind name, a document count and a batched search."""

    kind: str

    @property
    def num_documents(self) -> int: ...

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        """``[len(queries)][<= topk]`` hits, best first; safe to call from several threads."""
        ...


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best positive scores, by score then index: ``[<= k]``."""
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, scores.dtype)
    idx = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    idx = idx[np.lexsort((idx, -scores[idx]))]
    # Like Lucene, only documents sharing a term with the query are hits.
    idx = idx[scores[idx] > 0]
    return idx, scores[idx]


class BM25Retriever:
    """BM25 over a ``bm25s`` index; ``BM25Retriever.load(dir)``."""

    kind = "bm25"

    def __init__(self, model: Any, docs: DocStore, params: dict[str, Any]):
        self._model = model
        self._docs = docs
        self._params = params
        self._vocab: dict[str, int] = model.vocab_dict

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BM25Retriever":
        import bm25s

        manifest = read_manifest(directory)
        if manifest["kind"] != "bm25":
            raise ValueError(f"{directory} holds a {manifest['kind']!r} index, not 'bm25'")
        model = bm25s.BM25.load(str(pathlib.Path(directory) / BM25_DIR), show_progress=False)
        return cls(model, DocStore(directory), manifest["bm25s"])

    @property
    def num_documents(self) -> int:
        return len(self._docs)

    def _scores(self, tokens: list[str]) -> np.ndarray:
        ids = [self._vocab[t] for t in tokens if t in self._vocab]
        if not ids:
            return np.zeros(self.num_documents, np.float32)
        return np.asarray(self._model.get_scores_from_ids(ids), np.float32)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        out = []
        for tokens in bm25_tokenize(queries, self._params):
            idx, scores = _top_k(self._scores(tokens), topk)
            out.append([Hit(**self._docs[int(i)], score=float(s)) for i, s in zip(idx, scores)])
        return out


class DenseRetriever:
    """Inner-product search over L2-normalised embeddings in a faiss index.

    ``encode(texts) -> float32 [len(texts), dim]`` embeds queries (already prefixed);
    ``DenseRetriever.load(dir)`` uses the sentence-transformers model named in the manifest.
    """

    kind = "dense"

    def __init__(self, index: Any, encode: Callable[[list[str]], np.ndarray], docs: DocStore, query_prefix: str = ""):
        self._index = index
        self._encode = encode
        self._docs = docs
        self._query_prefix = query_prefix
        # One encoder call at a time: the model is shared by the server's worker threads.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: str | os.PathLike, model: str | os.PathLike | None = None, device: str | None = None):
        """``model`` overrides the model directory recorded in ``index.json``."""
        faiss, sentence_transformers = load_dense_deps()
        manifest = read_manifest(directory)
        if manifest["kind"] != "dense":
            raise ValueError(f"{directory} holds a {manifest['kind']!r} index, not 'dense'")
        params = manifest["dense"]
        encoder = sentence_transformers.SentenceTransformer(str(model or params["model"]), device=device)

        def encode(texts: list[str]) -> np.ndarray:
            return encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)

        index = faiss.read_index(str(pathlib.Path(directory) / DENSE_FILE))
        return cls(index, encode, DocStore(directory), params.get("query_prefix", ""))

    @property
    def num_documents(self) -> int:
        return len(self._docs)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Hit]]:
        k = min(topk, self.num_documents)
        if not queries or k <= 0:
            return [[] for _ in queries]
        with self._lock:
            emb = np.ascontiguousarray(self._encode([self._query_prefix + q for q in queries]), np.float32)
        scores, idx = self._index.search(emb, k)
        return [
            [Hit(**self._docs[int(i)], score=float(s)) for i, s in zip(row_i, row_s) if i >= 0]
            for row_i, row_s in zip(idx, scores)
        ]


def load_retriever(directory: str | os.PathLike, **dense_kwargs: Any) -> BM25Retriever | DenseRetriever:
    """The retriever for an index directory, by the ``kind`` in its ``index.json``."""
    kind = read_manifest(directory)["kind"]
    if kind == "bm25":
        return BM25Retriever.load(directory)
    return DenseRetriever.load(directory, **dense_kwargs)
