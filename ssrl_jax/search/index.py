"""Building a retrieval index directory from a corpus jsonl.

    python -m ssrl_jax.search.index --corpus corpus.jsonl --out DIR [--kind bm25]
    python -m ssrl_jax.search.index --corpus corpus.jsonl --out DIR --kind dense \\
        --model /path/to/sentence-transformers-model [--query-prefix "query: " --doc-prefix "passage: "]

Layout of ``DIR``:

- ``index.json``: the manifest, ``{"format": 1, "kind": "bm25" | "dense", "documents": N,
  "corpus": abs path, "bm25s": {...params}}`` or ``..., "dense": {...params}}``;
- ``documents.jsonl`` + ``offsets.npy``: the documents in index order (``corpus.DocStore``);
- ``bm25/``: the ``bm25s`` index (kind bm25), or ``dense.faiss``: a faiss inner-product index of
  L2-normalised embeddings (kind dense).

The BM25 defaults ``k1=0.9, b=0.4`` are Pyserini's (the Lucene BM25 Search-R1's BM25 server
uses); tokens are lower-cased words of two or more characters, English stop words removed, no
stemming. The directory is built under a temporary name and renamed at the end, so a failed
build never leaves a half-written index behind.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from ssrl_jax.cli_errors import ArgumentParser, cli_main, exit_user_error, user_message
from ssrl_jax.safe_paths import check_replaceable
from ssrl_jax.search.corpus import DOCUMENTS_FILE, OFFSETS_FILE, DocStore, read_corpus

__all__ = [
    "BM25_DIR",
    "DENSE_FILE",
    "MANIFEST",
    "build_bm25_index",
    "build_dense_index",
    "bm25_tokenize",
    "keep_jax_on_cpu",
    "load_dense_deps",
    "main",
    "read_manifest",
]

MANIFEST = "index.json"
BM25_DIR = "bm25"
DENSE_FILE = "dense.faiss"
FORMAT = 1
_INDEX_ENTRIES = (MANIFEST, BM25_DIR, DENSE_FILE, DOCUMENTS_FILE, OFFSETS_FILE)
BM25_DEFAULTS = {"k1": 0.9, "b": 0.4, "method": "lucene", "stopwords": "en", "lower": True, "stemmer": None}
DENSE_INSTALL = "pip install faiss-cpu sentence-transformers"


def keep_jax_on_cpu() -> None:
    """For the server and index processes only: bm25s imports JAX when it is installed and runs
    an op at import time, which would otherwise claim the host's TPU/GPU from the trainer."""
    os.environ["JAX_PLATFORMS"] = "cpu"


def load_dense_deps() -> tuple[Any, Any]:
    """``(faiss, sentence_transformers)``, or an ``ImportError`` saying what to install."""
    try:
        import faiss
        import sentence_transformers
    except ImportError as e:
        raise ImportError(f"the dense retriever needs faiss and sentence-transformers ({e}); `{DENSE_INSTALL}`") from e
    return faiss, sentence_transformers


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``index.json`` of an index directory; ``FileNotFoundError`` saying how to build one."""
    path = pathlib.Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not an index directory (no {MANIFEST}); build one with "
            f"`python -m ssrl_jax.search.index --corpus CORPUS.jsonl --out {directory}`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("kind") not in ("bm25", "dense"):
        fmt, kind = manifest.get("format"), manifest.get("kind")
        raise ValueError(f"{path}: unsupported index (format {fmt!r}, kind {kind!r})")
    return manifest


def bm25_tokenize(texts: Sequence[str], params: dict[str, Any]) -> list[list[str]]:
    """Word tokens of each text, the same way for documents and queries: ``[len(texts)][*]``."""
    import bm25s

    if params.get("stemmer") is not None:
        raise ValueError(f"stemmer {params['stemmer']!r} is not supported (only None)")
    tokens = bm25s.tokenize(
        list(texts), lower=params["lower"], stopwords=params["stopwords"], return_ids=False, show_progress=False
    )
    # bm25s turns a text with no tokens into [""]; an empty list is what it is.
    return [[t for t in doc if t] for doc in tokens]


def _staged(out: pathlib.Path, overwrite: bool, inputs: Sequence[tuple[str, os.PathLike]]):
    """A fresh sibling directory to build in, after checking that ``out`` may be (re)placed:
    even with ``overwrite``, only an index directory that holds none of ``inputs``."""
    check_replaceable(out, flag="--out", inputs=inputs,
                      is_own=lambda name: name in _INDEX_ENTRIES, what="index files")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def _publish(stage: pathlib.Path, out: pathlib.Path, manifest: dict[str, Any]) -> dict[str, Any]:
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return manifest


def build_bm25_index(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    *,
    k1: float = BM25_DEFAULTS["k1"],
    b: float = BM25_DEFAULTS["b"],
    method: str = BM25_DEFAULTS["method"],
    overwrite: bool = False,
) -> dict[str, Any]:
    """Builds a BM25 index of ``corpus`` (jsonl) in ``out``; returns the manifest written."""
    import bm25s

    corpus, out = pathlib.Path(corpus).resolve(), pathlib.Path(out)
    docs = read_corpus(corpus)
    params = {**BM25_DEFAULTS, "k1": k1, "b": b, "method": method}
    stage = _staged(out, overwrite, [("--corpus", corpus)])
    try:
        DocStore.write(stage, docs)
        model = bm25s.BM25(k1=k1, b=b, method=method)
        model.index(bm25_tokenize([d["contents"] for d in docs], params), show_progress=False)
        model.save(str(stage / BM25_DIR), show_progress=False)
        manifest = {
            "format": FORMAT,
            "kind": "bm25",
            "documents": len(docs),
            "corpus": str(corpus),
            "bm25s": {"version": bm25s.__version__, **params},
        }
        return _publish(stage, out, manifest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def build_dense_index(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike,
    query_prefix: str = "",
    doc_prefix: str = "",
    batch_size: int = 64,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Builds a dense index: ``model`` (a local sentence-transformers directory) embeds every
    ``doc_prefix + contents``; the L2-normalised embeddings go into a faiss ``IndexFlatIP``.
    Needs ``pip install faiss-cpu sentence-transformers``."""
    faiss, sentence_transformers = load_dense_deps()
    corpus, out, model = pathlib.Path(corpus).resolve(), pathlib.Path(out), pathlib.Path(model).resolve()
    docs = read_corpus(corpus)
    encoder = sentence_transformers.SentenceTransformer(str(model))
    stage = _staged(out, overwrite, [("--corpus", corpus), ("--model", model)])
    try:
        DocStore.write(stage, docs)
        emb = encoder.encode(
            [doc_prefix + d["contents"] for d in docs],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=True,
        ).astype("float32")
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        faiss.write_index(index, str(stage / DENSE_FILE))
        manifest = {
            "format": FORMAT,
            "kind": "dense",
            "documents": len(docs),
            "corpus": str(corpus),
            "dense": {
                "model": str(model),
                "dim": int(emb.shape[1]),
                "metric": "inner_product",
                "normalize": True,
                "query_prefix": query_prefix,
                "doc_prefix": doc_prefix,
            },
        }
        return _publish(stage, out, manifest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m ssrl_jax.search.index", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="corpus jsonl: one {'id': str, 'contents': 'Title\\ntext'} per line")
    p.add_argument("--out", required=True, help="index directory to create")
    p.add_argument("--kind", choices=("bm25", "dense"), default="bm25")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out")
    bm = p.add_argument_group("bm25")
    bm.add_argument("--k1", type=float, default=BM25_DEFAULTS["k1"])
    bm.add_argument("--b", type=float, default=BM25_DEFAULTS["b"])
    methods = ("lucene", "robertson", "atire")  # bm25l / bm25+ score non-matching documents too
    bm.add_argument("--method", default=BM25_DEFAULTS["method"], choices=methods)
    de = p.add_argument_group("dense")
    de.add_argument("--model", help="local sentence-transformers model directory (required for --kind dense)")
    de.add_argument("--query-prefix", default="", help="prepended to queries, e.g. 'query: ' for E5")
    de.add_argument("--doc-prefix", default="", help="prepended to documents, e.g. 'passage: ' for E5")
    de.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    if args.kind == "dense" and not args.model:
        p.error("--kind dense needs --model DIR")
    return args


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    keep_jax_on_cpu()
    start = time.perf_counter()
    try:
        if args.kind == "bm25":
            manifest = build_bm25_index(
                args.corpus, args.out, k1=args.k1, b=args.b, method=args.method, overwrite=args.overwrite
            )
        else:
            manifest = build_dense_index(
                args.corpus,
                args.out,
                model=args.model,
                query_prefix=args.query_prefix,
                doc_prefix=args.doc_prefix,
                batch_size=args.batch_size,
                overwrite=args.overwrite,
            )
    except (OSError, ValueError, ImportError) as e:
        exit_user_error(user_message(e) or str(e))
    took = time.perf_counter() - start
    print(f"built {manifest['kind']} index of {manifest['documents']} documents in {args.out} ({took:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
