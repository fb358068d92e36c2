"""The rollouts' search client: against the real server, a dead port and stub servers."""

from __future__ import annotations

import threading
import time

import pytest

from ssrl_jax.search.client import SearchClient, SearchError, SearchResult, format_documents, parse_response
from ssrl_jax.search.retriever import Hit

from ssrl_jax.search import SearchClient as ExportedClient


def ok_response(queries, topk=3):
    """A well-formed scored response: one document per query, named after it."""
    return {"result": [[{"document": {"id": q, "contents": f'"{q}"\ntext of {q}'}, "score": 1.0}] for q in queries]}


# -- formatting and parsing -----------------------------------------------------------------------
def test_format_documents_is_search_r1s():
    hits = [Hit("1", '"Paris"\nParis is in France.', 2.0), Hit("2", '"Berlin"\nBerlin is\nin Germany.', 1.0)]
    expected = 'Doc 1(Title: "Paris") Paris is in France.\nDoc 2(Title: "Berlin") Berlin is\nin Germany.'
    assert format_documents(hits) == expected
    # Search-R1's own response objects format the same.
    assert format_documents([{"document": h.document(), "score": h.score} for h in hits]) == format_documents(hits)
    assert format_documents([h.document() for h in hits]) == format_documents(hits)
    assert format_documents([]) == ""
    assert SearchResult("q", tuple(hits)).text == format_documents(hits)


def test_parse_response_with_and_without_scores():
    scored = {"result": [[{"document": {"id": "1", "contents": "T\nx"}, "score": 3}], []]}
    assert parse_response(scored, 2) == [(Hit("1", "T\nx", 3.0),), ()]
    # Search-R1's BM25 server adds title/text to the document; its E5 server sends no score when asked not to.
    plain = {"result": [[{"id": 5, "title": "T", "text": "x", "contents": "T\nx"}]]}
    assert parse_response(plain, 1) == [(Hit("5", "T\nx", None),)]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"result": [[]]}, "with 2 lists, got 1 lists"),
        ({"detail": "nope"}, "with 2 lists"),
        ({"result": [[], {}]}, "must be a list of documents"),
        ({"result": [[{"id": "1"}], []]}, "string 'contents'"),
        ({"result": [[{"document": {"contents": "T\nx"}, "score": "high"}], []]}, "score must be a number"),
    ],
)
def test_parse_response_rejects_malformed(payload, message):
    with pytest.raises(ValueError, match=message):
        parse_response(payload, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_failure"):
        SearchClient("http://127.0.0.1:1/retrieve", on_failure="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        SearchClient("http://127.0.0.1:1/retrieve", batch_size=0)


def test_bare_url_gets_the_endpoint():
    with SearchClient("http://127.0.0.1:8000") as c:
        assert c.url == "http://127.0.0.1:8000/retrieve"
    with SearchClient("http://127.0.0.1:8000/api/retrieve") as c:
        assert c.url == "http://127.0.0.1:8000/api/retrieve"
    assert ExportedClient is SearchClient


# -- against the real server ------------------------------------------------------------------------
QUESTIONS = {
    "capital of Germany": "d02",
    "capital of Japan": "d12",
    "who painted the Mona Lisa": "d16",
    "who discovered penicillin": "d17",
    "highest mountain": "d03",
    "largest hot desert": "d18",
    "Ode to Joy symphony": "d11",
    "Nobel Prize radioactivity": "d09",
    "double helix": "d13",
    "Olympic Games Athens": "d20",
}


def test_batches_and_cache(server_url):
    queries = list(QUESTIONS)
    with SearchClient(server_url, topk=2, batch_size=4, max_concurrency=3) as client:
        results = client.search(queries)
        assert [r.query for r in results] == queries
        assert [r.hits[0].id for r in results] == list(QUESTIONS.values())
        assert all(not r.failed and 1 <= len(r.hits) <= 2 and r.hits[0].score > 0 for r in results)
        assert client.counters() == {"queries": 10, "cache_hits": 0, "requests": 3, "retries": 0, "failures": 0}

        # Again, with duplicates and one new query: the cached ones cost no request.
        again = client.search(queries[:3] + [queries[0], "capital of France"])
        assert [r.hits[0].id for r in again] == ["d02", "d12", "d16", "d02", "d01"]
        assert again[0].hits == results[0].hits
        assert client.counters() == {"queries": 15, "cache_hits": 4, "requests": 4, "retries": 0, "failures": 0}
        assert client.reset_counters()["queries"] == 15 and client.counters()["queries"] == 0


def test_blank_and_long_queries(server_url, limits):
    long_query = "capital of Germany " * 50  # over the server's max_query_chars: cut, not refused
    with SearchClient(server_url, max_query_chars=limits["max_query_chars"], cache_size=0) as client:
        blank, long = client.search(["   ", long_query])
        assert blank == SearchResult("   ") and not blank.failed
        assert long.query == long_query and long.hits[0].id == "d02"
        assert client.counters()["requests"] == 1
        # No cache: the same query is asked again.
        client.search([long_query])
        assert client.counters() == {"queries": 3, "cache_hits": 0, "requests": 2, "retries": 0, "failures": 0}


def test_server_4xx_is_not_retried(server_url, limits):
    # A batch over the server's limit of queries per request is refused with 413.
    queries = [f"capital {i}" for i in range(limits["max_queries"] + 1)]
    with SearchClient(server_url, batch_size=len(queries), max_retries=3, backoff_s=0.01) as client:
        with pytest.raises(SearchError, match=r"HTTP 413: too many queries: 17; the limit is 16 .*\(not retried: a permanent refusal\)"):
            client.search(queries)
        assert client.counters()["requests"] == 1 and client.counters()["retries"] == 0


# -- failures --------------------------------------------------------------------------------------
def dead_url() -> str:
    import socket

    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/retrieve"


def test_dead_server_fail_policy_raises_after_backoff():
    url = dead_url()
    with SearchClient(url, max_retries=2, backoff_s=0.05, timeout_s=2, on_failure="fail") as client:
        start = time.monotonic()
        with pytest.raises(SearchError) as e:
            client.search(["a", "b"])
        assert time.monotonic() - start >= 0.05 + 0.10  # waited 0.05 then 0.10 s
        assert url in str(e.value) and "ConnectError" in str(e.value) and "after 3 attempts" in str(e.value)
        assert "failed for 2 of 2 queries" in str(e.value)
        assert client.counters() == {"queries": 2, "cache_hits": 0, "requests": 3, "retries": 2, "failures": 2}


def test_dead_server_fallback_policy_returns_failed_results():
    with SearchClient(dead_url(), max_retries=1, backoff_s=0.01, batch_size=2, on_failure="fallback") as client:
        results = client.search(["a", "b", "c", ""])
        assert [r.failed for r in results] == [True, True, True, False]
        assert all("ConnectError" in r.error and r.hits == () for r in results[:3])
        # 2 batches x 2 attempts; the blank query is no failure and needs no request.
        assert client.counters() == {"queries": 4, "cache_hits": 0, "requests": 4, "retries": 2, "failures": 3}
        # Failures are not cached: the next call tries again.
        client.search(["a"])
        assert client.counters()["requests"] == 6 and client.counters()["failures"] == 4


def test_5xx_is_retried_then_succeeds(make_stub):
    calls = []

    def handle(request):
        calls.append(request)
        if len(calls) <= 2:
            return 500, {"detail": "warming up"}
        return 200, ok_response(request["queries"])

    with make_stub(handle) as url, SearchClient(url, topk=5, max_retries=3, backoff_s=0.01) as client:
        [result] = client.search(["q1"])
        assert result.hits == (Hit("q1", '"q1"\ntext of q1', 1.0),) and not result.failed
        assert client.counters() == {"queries": 1, "cache_hits": 0, "requests": 3, "retries": 2, "failures": 0}
    assert calls[0] == {"queries": ["q1"], "topk": 5, "return_scores": True}


def test_5xx_until_retries_run_out(make_stub):
    with make_stub(lambda request: (503, {"detail": "overloaded"})) as url:
        with SearchClient(url, max_retries=2, backoff_s=0.01, on_failure="fallback") as client:
            [result] = client.search(["q"])
    assert result.failed and result.error == "HTTP 503: overloaded (after 3 attempts)"


def test_timeout_is_retried(make_stub):
    calls = []

    def handle(request):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.6)
        return 200, ok_response(request["queries"])

    with make_stub(handle) as url, SearchClient(url, timeout_s=0.2, max_retries=1, backoff_s=0.01) as client:
        [result] = client.search(["slow"])
        assert not result.failed and result.hits[0].id == "slow"
        assert client.counters()["retries"] == 1


def test_malformed_200_raises_even_under_fallback(make_stub):
    with make_stub(lambda request: (200, {"result": []})) as url:
        with SearchClient(url, on_failure="fallback") as client:
            with pytest.raises(SearchError, match=r"HTTP 200 with a malformed response: expected .* 1 lists, got 0"):
                client.search(["q"])
            assert client.counters()["requests"] == 1 and client.counters()["failures"] == 1


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_permanent_4xx_raises_even_under_fallback(make_stub, status):
    with make_stub(lambda request: (status, {"detail": f"refused {status}"})) as url:
        with SearchClient(url, on_failure="fallback", max_retries=3, backoff_s=0.01) as client:
            with pytest.raises(SearchError) as e:
                client.search(["q"])
            assert client.counters()["requests"] == 1  # not retried either
    message = str(e.value)
    assert url in message and f"HTTP {status}: refused {status}" in message
    assert "not retried: a permanent refusal" in message
    assert "on_failure='fallback' covers only transient failures: fix the request or the URL" in message


@pytest.mark.parametrize("status", [408, 429])
def test_transient_4xx_falls_back(make_stub, status):
    with make_stub(lambda request: (status, {"detail": "later"})) as url:
        with SearchClient(url, on_failure="fallback", max_retries=1, backoff_s=0.01) as client:
            [result] = client.search(["q"])
            assert client.counters()["requests"] == 2
    assert result.failed and result.error == f"HTTP {status}: later (after 2 attempts)"


def test_real_server_refusal_raises_under_fallback(server_url, limits):
    # Past the server's query cap: 413 from the real server, and a wrong path: 404.
    queries = [f"capital {i}" for i in range(limits["max_queries"] + 1)]
    with SearchClient(server_url, batch_size=len(queries), on_failure="fallback") as client:
        with pytest.raises(SearchError, match=r"HTTP 413: too many queries: 17; the limit is 16"):
            client.search(queries)
    with SearchClient(f"{server_url}/retrieev", on_failure="fallback") as client:
        with pytest.raises(SearchError, match=r"/retrieev failed .*HTTP 404: Not Found"):
            client.search(["capital"])


def test_dead_retriever_under_fallback_stops_after_consecutive_failures(make_stub):
    up = [True]

    def handle(request):
        return (200, ok_response(request["queries"])) if up[0] else (503, {"detail": "gone"})

    with make_stub(handle) as url, SearchClient(url, on_failure="fallback", max_retries=0, batch_size=1,
                                                max_consecutive_failures=3, cache_size=0) as client:
        up[0] = False
        assert [r.failed for r in client.search(["a", "b"])] == [True, True]  # 2 in a row: fallback
        up[0] = True
        assert not client.search(["c"])[0].failed  # an answer resets the count
        up[0] = False
        client.search(["d", "e"])
        with pytest.raises(SearchError, match=r"3 request batches in a row failed \(limit "
                                              r"search.max_consecutive_failures=3\); the retriever looks "
                                              r"down, last error: HTTP 503: gone"):
            client.search(["f"])


def test_batches_run_concurrently(make_stub):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def handle(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return 200, ok_response(request["queries"])

    queries = [f"q{i}" for i in range(8)]
    with make_stub(handle) as url, SearchClient(url, batch_size=2, max_concurrency=4) as client:
        start = time.monotonic()
        results = client.search(queries)
        took = time.monotonic() - start
    assert [r.hits[0].id for r in results] == queries
    assert peak[0] == 4 and took < 0.6  # 4 batches of 0.2 s at once, not 0.8 s in a row
