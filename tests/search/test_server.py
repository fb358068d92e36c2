"""The retriever server: a real uvicorn process on loopback (``server_url``), plus the app
in-process for what a real index cannot do (a retriever that raises)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from ssrl_jax.search.server import Limits, create_app


def post(url: str, body, **kwargs) -> httpx.Response:
    """POSTs ``body`` to /retrieve: JSON-encoded unless it is already ``bytes``."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}/retrieve", content=content, headers=headers, timeout=10, **kwargs)


def check_scored(result, num_queries: int, topk: int):
    """Search-R1's shape with scores: ``[[{"document": {"id", "contents"}, "score"}, ...], ...]``."""
    assert isinstance(result, list) and len(result) == num_queries
    for row in result:
        assert isinstance(row, list) and len(row) <= topk
        for item in row:
            assert set(item) == {"document", "score"}
            assert set(item["document"]) == {"id", "contents"}
            assert isinstance(item["document"]["id"], str) and isinstance(item["document"]["contents"], str)
            assert isinstance(item["score"], float)
        scores = [item["score"] for item in row]
        assert scores == sorted(scores, reverse=True)


def test_health_states_the_limits(server_url, docs, limits):
    r = httpx.get(f"{server_url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "documents": len(docs), "kind": "bm25",
                        "limits": {**limits, "default_topk": 3, "body_timeout_s": 30.0}}


def test_retrieve_with_scores(server_url, docs):
    queries = ["What is the capital of Germany?", "who painted the Mona Lisa"]
    r = post(server_url, {"queries": queries, "topk": 3, "return_scores": True})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"result"}
    check_scored(body["result"], 2, 3)
    first = body["result"][0][0]["document"]
    assert first == {"id": "d02", "contents": f'"Berlin"\n{docs[1][2]}'}
    assert body["result"][1][0]["document"]["id"] == "d16"


def test_retrieve_without_scores(server_url):
    # return_scores absent means false, as in Search-R1; documents come without the wrapper.
    explicit = {"queries": ["capital of Japan"], "topk": 2, "return_scores": False}
    for body in (explicit, {"queries": ["capital of Japan"]}):
        result = post(server_url, body).json()["result"]
        assert len(result) == 1 and 1 <= len(result[0]) <= 3
        assert all(set(doc) == {"id", "contents"} for doc in result[0])
        assert result[0][0]["id"] == "d12"


def test_default_topk_and_no_match(server_url):
    body = {"queries": ["capital", "xyzzy plugh"], "topk": None, "return_scores": True}
    result = post(server_url, body).json()["result"]
    assert len(result[0]) == 3 and result[1] == []


def test_max_queries_and_max_chars_are_allowed(server_url, limits):
    n, chars = limits["max_queries"], limits["max_query_chars"]
    query = ("capital " * chars)[:chars]
    r = post(server_url, {"queries": [query] * n, "topk": limits["max_topk"], "return_scores": True})
    assert r.status_code == 200
    check_scored(r.json()["result"], n, limits["max_topk"])


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"topk": 3}, 422, "'queries' must be a list of strings, got missing"),
        ({"queries": "capital"}, 422, "'queries' must be a list of strings, got a str"),
        ({"queries": ["a", 3]}, 422, "queries[1] must be a string, got int"),
        ({"queries": ["capital"] * 17}, 413, "too many queries: 17; the limit is 16 per request"),
        ({"queries": ["capital"], "topk": 11}, 422, "'topk' must be 0 (the default, 3) or between 1 and 10, got 11"),
        ({"queries": ["capital"], "topk": -2}, 422, "'topk' must be 0 (the default, 3) or between 1 and 10, got -2"),
        ({"queries": ["capital"], "topk": "3"}, 422, "'topk' must be an integer, got str"),
        ({"queries": ["capital"], "topk": 2.5}, 422, "'topk' must be an integer, got float"),
        ({"queries": ["capital"], "topk": True}, 422, "'topk' must be an integer, got bool"),
        ({"queries": ["capital"], "return_scores": "yes"}, 422, "'return_scores' must be true or false, got str"),
        (b'{"queries": ["capital"], "topk": ', 400, "malformed JSON body"),
        (b"", 400, "malformed JSON body"),
        (b"\xff\xfe\x00", 400, "malformed JSON body"),
        (b'["capital"]', 400, "the body must be a JSON object, got list"),
        (b"[" * 100_000, 413, "the limit is 65536"),
    ],
    ids=lambda v: None if isinstance(v, int) else str(v)[:40],
)
def test_bad_requests_get_4xx_with_a_message(server_url, body, status, detail):
    r = post(server_url, body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert detail in r.json()["detail"]


def test_server_still_serves_after_bad_requests(server_url):
    post(server_url, b"{not json")
    assert post(server_url, {"queries": ["capital of Germany"]}).json()["result"][0][0]["id"] == "d02"


def test_16_concurrent_clients(server_url, limits):
    """16 threads, each its own connection, for ~3 s: no errors, every answer well-formed."""
    queries = ["capital of Germany", "largest river", "Nobel Prize chemist", "theory of relativity",
               "Olympic Games", "who wrote Macbeth", "desert in Africa", "double helix molecule"]  # fmt: skip
    errors: list[str] = []
    counts = [0] * 16
    stop = time.monotonic() + 3.0

    def client(i: int):
        with httpx.Client(timeout=10) as http:
            n = 0
            while time.monotonic() < stop:
                batch = [queries[(i + n + j) % len(queries)] for j in range(1 + (i + n) % 4)]
                topk = 1 + (i + n) % 5
                try:
                    body = {"queries": batch, "topk": topk, "return_scores": True}
                    r = http.post(f"{server_url}/retrieve", json=body)
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text}")
                    else:
                        check_scored(r.json()["result"], len(batch), topk)
                        counts[i] += 1
                except Exception as e:  # noqa: BLE001 - any failure is reported by the assert below
                    errors.append(f"{type(e).__name__}: {e}")
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert all(c > 0 for c in counts), counts


# -- in-process ----------------------------------------------------------------------------------
class _Broken:
    kind = "bm25"
    num_documents = 1

    def search(self, queries, topk):
        raise RuntimeError("index file vanished")


def test_retriever_error_is_a_500_with_a_message():
    with TestClient(create_app(_Broken())) as client:
        r = client.post("/retrieve", json={"queries": ["x"]})
    assert r.status_code == 500 and r.json() == {"detail": "retrieval failed: RuntimeError: index file vanished"}


def test_limits_are_checked():
    with pytest.raises(ValueError, match="default_topk"):
        Limits(max_topk=5, default_topk=6)
    with pytest.raises(ValueError, match="max_queries"):
        create_app(_Broken(), max_queries=0)
