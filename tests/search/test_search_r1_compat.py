"""Search-R1's own client against a real server process with its default limits.

``SearchR1Turn`` re-implements, from reading Search-R1's ``search_r1/llm_agent/generation.py``,
what its training loop does with the retriever in one turn: ``postprocess_predictions`` (the
first ``<search>``/``<answer>`` tag pair of each response, its content stripped),
``execute_predictions`` (one request with the queries of every searching row, even when there
are none), ``_batch_search`` (``{"queries", "topk", "return_scores": True}``, the response's
``["result"]`` read without checking the status) and ``_passages2string`` (``Doc i(Title: <first
contents line>) <rest>\\n``). Search-R1's server answers each of these requests with 200; a 4xx
here would surface, as it does in Search-R1, as ``KeyError: 'result'``.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from .conftest import BODY_TIMEOUT_S

TAG = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


class SearchR1Turn:
    """One turn of Search-R1's rollout loop against ``url`` (its ``search_url``)."""

    def __init__(self, url: str, topk: int):
        self.url = f"{url}/retrieve"
        self.topk = topk
        self.requests: list[dict] = []

    @staticmethod
    def actions(responses: list[str]) -> tuple[list[str | None], list[str]]:
        actions, contents = [], []
        for response in responses:
            match = TAG.search(response)
            actions.append(match.group(1) if match else None)
            contents.append(match.group(2).strip() if match else "")
        return actions, contents

    def batch_search(self, queries: list[str]) -> list[str]:
        payload = {"queries": queries, "topk": self.topk, "return_scores": True}
        self.requests.append(payload)
        # `requests.post(url, json=payload).json()`: no status check, as in Search-R1.
        results = httpx.post(self.url, json=payload, timeout=120).json()["result"]
        return [self.passages(result) for result in results]

    @staticmethod
    def passages(result: list[dict]) -> str:
        text = ""
        for i, item in enumerate(result):
            contents = item["document"]["contents"]
            title, *rest = contents.split("\n")
            text += f"Doc {i + 1}(Title: {title}) {chr(10).join(rest)}\n"
        return text

    def observations(self, responses: list[str]) -> list[str]:
        """``next_obs`` of ``execute_predictions`` for responses of active rows (the invalid-action
        message is shortened to its tag)."""
        actions, contents = self.actions(responses)
        found = self.batch_search([c for a, c in zip(actions, contents) if a == "search"])
        assert len(found) == actions.count("search")
        obs = []
        for action in actions:
            if action == "search":
                obs.append(f"\n\n<information>{found.pop(0).strip()}</information>\n\n")
            else:
                obs.append("" if action == "answer" else "<invalid>")
        assert not found
        return obs


def doc_line(docs, doc_id: str, i: int) -> str:
    """How Search-R1 prints corpus document ``doc_id`` as the ``i``-th result (title quoted, as
    the first line of ``contents`` is)."""
    _, title, text = next(d for d in docs if d[0] == doc_id)
    return f'Doc {i}(Title: "{title}") {text}'


def test_a_turn_without_searches_sends_an_empty_list(default_server_url):
    turn = SearchR1Turn(default_server_url, topk=3)
    assert turn.observations(["<answer>Paris</answer>", "no tag at all"]) == ["", "<invalid>"]
    assert turn.requests == [{"queries": [], "topk": 3, "return_scores": True}]
    r = httpx.post(f"{default_server_url}/retrieve", json=turn.requests[0])
    assert r.status_code == 200 and r.json() == {"result": []}


def test_empty_queries_are_answered_like_search_r1s_bm25(default_server_url, docs):
    """An empty ``<search></search>`` (Search-R1 strips the content) costs only its own row:
    BM25 finds no document for no terms, as Pyserini's searcher in Search-R1's BM25 server."""
    turn = SearchR1Turn(default_server_url, topk=2)
    obs = turn.observations(["<think>x</think><search></search>", "<search>capital of Germany</search>",
                             "<search>   </search>", "<answer>1969</answer>"])
    assert turn.requests[0]["queries"] == ["", "capital of Germany", ""]
    assert obs[0] == obs[2] == "\n\n<information></information>\n\n"
    assert obs[1].startswith(f"\n\n<information>{doc_line(docs, 'd02', 1)}\nDoc 2(Title: ")
    assert obs[3] == ""


def test_topk_zero_and_missing_mean_the_server_default(default_server_url):
    turn = SearchR1Turn(default_server_url, topk=0)
    obs = turn.observations(["<search>capital city</search>"])
    assert obs[0].count("Doc ") == 3  # the server's --topk default
    for body in ({"queries": ["capital city"]}, {"queries": ["capital city"], "topk": None}):
        assert len(httpx.post(f"{default_server_url}/retrieve", json=body).json()["result"][0]) == 3


def test_a_full_search_r1_batch_in_one_request(default_server_url, docs):
    """Search-R1's largest request: 512 prompts × 5 responses, every row searching."""
    questions = [("capital of Germany", "d02"), ("who painted the Mona Lisa", "d16"),
                 ("first humans on the Moon", "d19"), ("largest hot desert", "d18"),
                 ("antibiotic discovered by Fleming", "d17")]  # fmt: skip
    rows = [questions[i % len(questions)] for i in range(512 * 5)]
    turn = SearchR1Turn(default_server_url, topk=3)
    obs = turn.observations([f"<think>...</think>\n<search> {q} </search>" for q, _ in rows])
    assert len(turn.requests[0]["queries"]) == 2560
    for (_, doc_id), text in zip(rows, obs):
        assert text.startswith(f"\n\n<information>{doc_line(docs, doc_id, 1)}")
        assert 1 <= text.count("Doc ") <= 3 and text.endswith("</information>\n\n")
    assert obs[:5] == obs[5:10]  # the same query, the same documents, wherever it sits


def test_scores_shapes_match_search_r1(default_server_url, docs):
    body = {"queries": ["capital of Japan", ""], "topk": 2}
    scored = httpx.post(f"{default_server_url}/retrieve", json={**body, "return_scores": True}).json()
    plain = httpx.post(f"{default_server_url}/retrieve", json={**body, "return_scores": False}).json()
    assert [[item["document"] for item in row] for row in scored["result"]] == plain["result"]
    assert plain["result"][1] == [] and plain["result"][0][0]["id"] == "d12"
    assert all(isinstance(item["score"], float) for item in scored["result"][0])


def test_long_queries_are_cut_not_refused(default_server_url):
    limit = httpx.get(f"{default_server_url}/health").json()["limits"]["max_query_chars"]
    query = "capital of Germany " + "x" * limit  # Search-R1's server would just embed it
    r = httpx.post(f"{default_server_url}/retrieve", json={"queries": [query], "topk": 1})
    assert r.status_code == 200 and r.json()["result"][0][0]["id"] == "d02"


def test_over_the_query_cap_is_refused_with_the_limit(default_server_url):
    limits = httpx.get(f"{default_server_url}/health").json()["limits"]
    assert limits["max_queries"] >= 4096
    r = httpx.post(f"{default_server_url}/retrieve", json={"queries": ["a"] * (limits["max_queries"] + 1)})
    assert r.status_code == 413 and f"the limit is {limits['max_queries']}" in r.json()["detail"]


def test_a_stalled_body_is_closed_within_the_timeout(default_server_url):
    """Headers and half the body, then nothing: the server answers 408 and closes the socket."""
    port = int(default_server_url.rsplit(":", 1)[1])
    body = b'{"queries": ["capital of Germany"], "topk": 1}'
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT_S + 10) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        received = b""
        while chunk := sock.recv(4096):  # b"" once the server closes the connection
            received += chunk
        elapsed = time.monotonic() - start
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 5, elapsed
    assert received.startswith(b"HTTP/1.1 408 ") and b"connection: close" in received.lower()
    assert b"did not arrive within 2 s (10 bytes received)" in received
    # The server still serves others.
    r = httpx.post(f"{default_server_url}/retrieve", json={"queries": ["capital of Germany"], "topk": 1})
    assert r.json()["result"][0][0]["id"] == "d02"


@pytest.mark.parametrize("queries", [[], ["capital"]])
def test_return_scores_false_is_a_list_of_documents(default_server_url, queries):
    r = httpx.post(f"{default_server_url}/retrieve", json={"queries": queries, "topk": 1})
    assert r.status_code == 200
    assert all(set(doc) == {"id", "contents"} for row in r.json()["result"] for doc in row)
    assert len(r.json()["result"]) == len(queries)
