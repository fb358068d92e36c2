"""Fixtures of the search tests: a 20-document corpus, its BM25 index, a real server process on
loopback, and a scriptable stub server (``http.server`` in a thread)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ssrl_jax.search.index import build_bm25_index

# Limits the server fixture runs with (small, so the limit tests stay cheap).
MAX_QUERIES = 16
MAX_QUERY_CHARS = 256
MAX_TOPK = 10
MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_S = 2.0

# (id, title, text); the questions in test_corpus_index.py each have one obvious answer here.
DOCS = [
    ("d01", "Paris", "Paris is the capital and most populous city of France, on the river Seine."),
    ("d02", "Berlin", "Berlin is the capital of Germany and its largest city by population."),
    ("d03", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("d04", "Python (programming language)", "Python is a programming language created by Guido van Rossum in 1991."),
    ("d05", "Photosynthesis", "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar."),
    ("d06", "Albert Einstein", "Albert Einstein was a physicist who developed the theory of relativity."),
    ("d07", "Amazon River", "The Amazon River in South America is the largest river by discharge volume."),
    ("d08", "Jupiter", "Jupiter is the fifth planet from the Sun and the largest planet in the Solar System."),
    ("d09", "Marie Curie", "Marie Curie was a chemist who won Nobel Prizes for research on radioactivity."),
    ("d10", "Great Wall of China", "The Great Wall of China is a line of fortifications across northern China."),
    ("d11", "Beethoven", "Ludwig van Beethoven was a German composer; his Ninth Symphony ends with the Ode to Joy."),
    ("d12", "Tokyo", "Tokyo is the capital of Japan and one of the most populous metropolitan areas."),
    ("d13", "DNA", "DNA is a molecule carrying genetic instructions, shaped as a double helix."),
    ("d14", "Pacific Ocean", "The Pacific Ocean is the largest and deepest of the oceans on Earth."),
    ("d15", "William Shakespeare", "William Shakespeare was an English playwright who wrote Hamlet and Macbeth."),
    ("d16", "Leonardo da Vinci", "Leonardo da Vinci was an Italian painter who painted the Mona Lisa."),
    ("d17", "Penicillin", "Penicillin is an antibiotic discovered by Alexander Fleming in 1928."),
    ("d18", "Sahara", "The Sahara is a desert in North Africa, the largest hot desert in the world."),
    ("d19", "Moon landing", "Apollo 11 landed the first humans, Neil Armstrong and Buzz Aldrin, on the Moon in 1969."),
    ("d20", "Olympic Games", "The modern Olympic Games began in Athens in 1896 and are held every four years."),
]


def write_corpus(path: pathlib.Path, docs=DOCS) -> pathlib.Path:
    """A corpus jsonl in the Wikipedia dump's form: ``contents = '"Title"\\ntext'``."""
    with path.open("w", encoding="utf-8") as f:
        for doc_id, title, text in docs:
            f.write(json.dumps({"id": doc_id, "contents": f'"{title}"\n{text}'}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> pathlib.Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def bm25_index(corpus_path, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("index") / "bm25"
    build_bm25_index(corpus_path, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_index(index: pathlib.Path, log_path: pathlib.Path, *args: str) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a real ``python -m ssrl_jax.search.server --index INDEX ARGS``
    process, healthy; stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "ssrl_jax.search.server", "--index", str(index), "--port", str(port),
           "--log-level", "warning", *args]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after 60 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server_url(bm25_index, tmp_path_factory) -> Iterator[str]:
    """A real server process with the small test limits below."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with serve_index(bm25_index, log_path, "--max-queries", str(MAX_QUERIES),
                     "--max-query-chars", str(MAX_QUERY_CHARS), "--max-topk", str(MAX_TOPK),
                     "--max-body-bytes", str(MAX_BODY_BYTES)) as url:
        yield url


@pytest.fixture(scope="session")
def default_server_url(bm25_index, tmp_path_factory) -> Iterator[str]:
    """A real server process with its default limits (what a user starts), but a 2 s body
    timeout so that the stalled-body test stays short."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with serve_index(bm25_index, log_path, "--body-timeout", str(BODY_TIMEOUT_S)) as url:
        yield url


Handler = Callable[[dict], tuple[int, object]]


@contextlib.contextmanager
def stub_server(handle: Handler) -> Iterator[str]:
    """Serves ``handle(request_json) -> (status, response_json)`` on loopback; yields its URL."""

    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status, payload = handle(json.loads(body))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_stub():
    """``stub_server`` as a fixture: ``with make_stub(handle) as url: ...``."""
    return stub_server


@pytest.fixture(scope="session")
def limits() -> dict[str, int]:
    """The limits the ``server_url`` process runs with."""
    return {"max_queries": MAX_QUERIES, "max_query_chars": MAX_QUERY_CHARS, "max_topk": MAX_TOPK,
            "max_body_bytes": MAX_BODY_BYTES}  # fmt: skip


@pytest.fixture(scope="session")
def docs() -> list[tuple[str, str, str]]:
    """The corpus as ``(id, title, text)`` rows."""
    return list(DOCS)
