"""Corpus validation, the index builder and its CLI, and the retrievers over an index."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ssrl_jax.safe_paths import UnsafeOverwriteError
from ssrl_jax.search import index as index_cli
from ssrl_jax.search.corpus import CorpusError, DocStore, read_corpus, split_title
from ssrl_jax.search.index import build_bm25_index, read_manifest
from ssrl_jax.search.retriever import BM25Retriever, DenseRetriever, Hit, Retriever, load_retriever
from tests.helpers import user_error


# -- corpus ------------------------------------------------------------------------------------
def test_read_corpus(corpus_path, docs):
    rows = read_corpus(corpus_path)
    assert [r["id"] for r in rows] == [d[0] for d in docs]
    assert rows[0] == {"id": "d01", "contents": f'"Paris"\n{docs[0][2]}'}


def test_read_corpus_skips_blank_lines_and_extra_keys(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "contents": "T\\nx", "title": "T"}\n\n   \n{"id": "b", "contents": "U\\ny"}\n')
    assert read_corpus(path) == [{"id": "a", "contents": "T\nx"}, {"id": "b", "contents": "U\ny"}]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "x", "contents": ', "not valid JSON"),
        ('["x", "T\\ny"]', "must be a JSON object, got list"),
        ('{"contents": "T\\ny"}', "field 'id' is missing"),
        ('{"id": 7, "contents": "T\\ny"}', "field 'id' must be a string, got int"),
        ('{"id": "x"}', "field 'contents' is missing"),
        ('{"id": "x", "contents": null}', "field 'contents' must be a string, got NoneType"),
        ('{"id": "x", "contents": "  "}', "field 'contents' is empty"),
        ('{"id": "a", "contents": "T\\ny"}', "field 'id': duplicate id 'a' (first on line 1)"),
    ],
)
def test_bad_corpus_row_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "contents": "T\\nx"}\n\n' + line + "\n")
    with pytest.raises(CorpusError) as e:
        read_corpus(path)
    assert f"{path}:3: " in str(e.value)
    assert message in str(e.value)


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(CorpusError, match="no documents"):
        read_corpus(path)


def test_split_title():
    assert split_title('"Title"\nline 1\nline 2') == ('"Title"', "line 1\nline 2")
    assert split_title("only a title") == ("only a title", "")


def test_docstore_round_trip(tmp_path):
    docs = [{"id": "é", "contents": "Ünïcode\n日本語 text"}, {"id": "2", "contents": "T\n\"quoted\"\nand more"}]
    assert DocStore.write(tmp_path, docs) == 2
    store = DocStore(tmp_path)
    assert len(store) == 2 and [store[0], store[1]] == docs
    with pytest.raises(IndexError):
        store[2]
    store.close()


# -- index builder -----------------------------------------------------------------------------
def test_manifest_and_layout(bm25_index, corpus_path, docs):
    manifest = read_manifest(bm25_index)
    assert manifest["kind"] == "bm25" and manifest["documents"] == len(docs)
    assert manifest["corpus"] == str(corpus_path.resolve())
    defaults = {"k1": 0.9, "b": 0.4, "method": "lucene", "stopwords": "en", "stemmer": None}
    assert defaults.items() <= manifest["bm25s"].items()
    assert json.loads((bm25_index / "index.json").read_text()) == manifest
    assert (bm25_index / "bm25").is_dir() and (bm25_index / "documents.jsonl").is_file()
    assert not list(bm25_index.parent.glob(".*partial*"))


def test_not_an_index_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m ssrl_jax.search.index"):
        read_manifest(tmp_path)


def test_refuses_to_replace_without_overwrite(corpus_path, tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UnsafeOverwriteError, match="not index files \\(keep.txt\\)"):
        build_bm25_index(corpus_path, out)
    with pytest.raises(UnsafeOverwriteError, match="--overwrite or not"):
        build_bm25_index(corpus_path, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    build_bm25_index(corpus_path, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_bm25_index(corpus_path, out, k1=1.2)
    build_bm25_index(corpus_path, out, k1=1.2, overwrite=True)  # an index replaces an index
    assert read_manifest(out)["bm25s"]["k1"] == 1.2


def test_cli_never_deletes_the_corpus_or_a_workdir(corpus_path, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(corpus_path.read_bytes())
    for out in (folder, tmp_path):  # the corpus's folder, and a folder above it
        error = user_error(capsys, index_cli.main,
                           ["--corpus", str(corpus), "--out", str(out), "--overwrite"])
        assert f"--out {out}: contains the input --corpus {corpus}" in error
        assert corpus.read_bytes() == corpus_path.read_bytes()
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "1").mkdir(parents=True)
    error = user_error(capsys, index_cli.main,
                       ["--corpus", str(corpus), "--out", str(workdir), "--overwrite"])
    assert "holds a training workdir" in error
    assert (workdir / "checkpoints" / "1").is_dir()


def test_cli(corpus_path, tmp_path, capsys):
    out = tmp_path / "cli-index"
    assert index_cli.main(["--corpus", str(corpus_path), "--out", str(out), "--b", "0.5"]) == 0
    assert "built bm25 index of 20 documents" in capsys.readouterr().out
    assert read_manifest(out)["bm25s"]["b"] == 0.5


def test_cli_reports_a_bad_corpus(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "T\\nx"}\n{"id": "b"}\n')
    error = user_error(capsys, index_cli.main, ["--corpus", str(bad), "--out", str(tmp_path / "out")])
    assert f"{bad}:2: field 'contents' is missing" in error
    assert not (tmp_path / "out").exists()


# -- BM25 retriever ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bm25(bm25_index) -> BM25Retriever:
    return BM25Retriever.load(bm25_index)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("What is the capital of Germany?", "d02"),
        ("capital of Japan", "d12"),
        ("who created the Python programming language", "d04"),
        ("highest mountain on Earth", "d03"),
        ("who discovered penicillin", "d17"),
        ("who painted the Mona Lisa", "d16"),
        ("first humans on the Moon", "d19"),
        ("which playwright wrote Hamlet", "d15"),
    ],
)
def test_bm25_ranks_the_right_document_first(bm25, query, expected):
    [hits] = bm25.search([query], 3)
    assert hits[0].id == expected
    assert all(a.score >= b.score > 0 for a, b in zip(hits, hits[1:]))


def test_bm25_batch_topk_and_no_match(bm25, docs):
    assert isinstance(bm25, Retriever) and bm25.kind == "bm25" and bm25.num_documents == len(docs)
    out = bm25.search(["capital", "zzzz qqqq", "the of and", "largest"], 2)
    assert [len(h) for h in out] == [2, 0, 0, 2]
    # topk above the number of matching documents: only the documents that match.
    [hits] = bm25.search(["capital"], 100)
    assert {h.id for h in hits} == {"d01", "d02", "d12"}
    hit = hits[0]
    assert isinstance(hit, Hit) and hit.title.startswith('"')
    assert hit.document() == {"id": hit.id, "contents": hit.contents}


def test_bm25_is_thread_safe(bm25):
    queries = ["capital of Germany", "Nobel Prize radioactivity", "largest desert", "Olympic Games Athens"]
    expected = bm25.search(queries, 3)
    errors = []

    def worker():
        for _ in range(20):
            if bm25.search(queries, 3) != expected:
                errors.append("mismatch")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_load_retriever_dispatches_on_kind(bm25_index):
    assert isinstance(load_retriever(bm25_index), BM25Retriever)


# -- dense retriever ---------------------------------------------------------------------------
def test_dense_without_its_packages_says_what_to_install(bm25_index, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name in ("faiss", "sentence_transformers"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="pip install faiss-cpu sentence-transformers"):
        DenseRetriever.load(bm25_index)


def _hash_encoder(dim: int = 64):
    """A bag-of-words embedding by word hash: enough to check the plumbing of faiss search."""
    import zlib

    def encode(texts):
        out = np.zeros((len(texts), dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace("?", " ").split():
                out[row, zlib.crc32(word.encode()) % dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)

    return encode


def test_dense_search_with_faiss(bm25_index):
    faiss = pytest.importorskip("faiss")
    encode = _hash_encoder()
    store = DocStore(bm25_index)
    index = faiss.IndexFlatIP(64)
    index.add(encode([store[i]["contents"] for i in range(len(store))]))
    dense = DenseRetriever(index, encode, store)
    assert isinstance(dense, Retriever) and dense.kind == "dense"
    out = dense.search(["Paris France Seine", "Tokyo Japan"], 2)
    assert [h[0].id for h in out] == ["d01", "d12"] and all(len(h) == 2 for h in out)


def test_dense_index_end_to_end(corpus_path, tmp_path):
    """Runs only where faiss, sentence-transformers and a local model (SSRL_DENSE_MODEL) exist."""
    import os

    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    model = os.environ.get("SSRL_DENSE_MODEL")
    if not model:
        pytest.skip("set SSRL_DENSE_MODEL to a local sentence-transformers model directory")
    out = tmp_path / "dense"
    index_cli.build_dense_index(corpus_path, out, model=model)
    dense = load_retriever(out)
    assert dense.kind == "dense"
    assert dense.search(["What is the capital of Germany?"], 3)[0][0].id == "d02"
