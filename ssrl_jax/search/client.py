"""The client the rollouts use to reach a retriever that speaks Search-R1's ``/retrieve`` API
(ours, ``python -m ssrl_jax.search.server``, or Search-R1's own E5 server).

``SearchClient.search(queries) -> list[SearchResult]`` sends the queries it has not cached in
batches, several batches at once, each with a timeout and retries with exponential back-off on
transient failures: connection errors, timeouts, 408, 429 and 5xx. When a batch still fails,
the failure policy decides: ``"fail"`` raises ``SearchError`` (naming the URL and the cause) and
the training step fails; ``"fallback"`` returns results with ``failed=True`` so the caller keeps
the model's own information. A permanent failure — any other 4xx (bad request, 404, 413, 422)
or a 200 that is not Search-R1's response — always raises ``SearchError`` with the URL, status
and body: the same request would fail again, so falling back would only hide a wrong URL or
a server that refuses what we send. Under ``"fallback"``, ``max_consecutive_failures`` failed
batches in a row also raise: the retriever is down, and a run that silently trains without it
is not the run that was asked for. ``counters()`` gives the numbers for the training metrics.

``format_documents(hits)`` is the text the model sees inside ``<information>`` (SPEC §7).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx

from ssrl_jax.cli_errors import UserError
from ssrl_jax.search.corpus import split_title
from ssrl_jax.search.retriever import Hit

__all__ = ["FAILURE_POLICIES", "SearchClient", "SearchError", "SearchResult", "format_documents", "parse_response"]

FAILURE_POLICIES = ("fail", "fallback")
COUNTERS = ("queries", "cache_hits", "requests", "retries", "failures")
_DETAIL_LIMIT = 300


class SearchError(UserError, RuntimeError):
    """The retriever could not answer and the failure policy is ``"fail"``."""


@dataclass(frozen=True)
class SearchResult:
    """The answer to one query: its ``hits`` (best first), or ``failed=True`` with the ``error``.

    A blank query gets no hits and is not a failure: there is nothing to search for.
    """

    query: str
    hits: tuple[Hit, ...] = ()
    failed: bool = False
    error: str | None = None

    @property
    def text(self) -> str:
        """``format_documents(hits)``: what goes inside ``<information>``."""
        return format_documents(self.hits)


def format_documents(docs: Sequence[Hit | Mapping[str, Any]]) -> str:
    """``"Doc 1(Title: T1) text1\\nDoc 2(Title: T2) text2"``: each document's first ``contents``
    line is its title, the rest its text (Search-R1's ``_passages2string``, stripped).

    ``docs``: ``Hit``s, or Search-R1 objects ``{"id", "contents"}`` / ``{"document": {...}, "score"}``.
    """
    lines = []
    for i, doc in enumerate(docs, start=1):
        if isinstance(doc, Hit):
            contents = doc.contents
        else:
            contents = (doc["document"] if "document" in doc else doc)["contents"]
        title, text = split_title(contents)
        lines.append(f"Doc {i}(Title: {title}) {text}")
    return "\n".join(lines)


def _hit(item: Any) -> Hit:
    if isinstance(item, dict) and "document" in item:
        doc, score = item["document"], item.get("score")
    else:
        doc, score = item, None
    if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
        raise ValueError(f"a document must be an object with a string 'contents', got {str(doc)[:80]}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"a score must be a number, got {score!r}")
    doc_id = doc.get("id")
    return Hit("" if doc_id is None else str(doc_id), doc["contents"], None if score is None else float(score))


def parse_response(payload: Any, num_queries: int) -> list[tuple[Hit, ...]]:
    """Hits per query from a ``/retrieve`` response body, with or without scores; ``ValueError``
    if it is not ``{"result": [[doc, ...] * num_queries]}``."""
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, list) or len(result) != num_queries:
        got = f"{len(result)} lists" if isinstance(result, list) else str(payload)[:80]
        raise ValueError(f"expected {{'result': [...]}} with {num_queries} lists, got {got}")
    if not all(isinstance(row, list) for row in result):
        raise ValueError("every entry of 'result' must be a list of documents")
    return [tuple(_hit(item) for item in row) for row in result]


class _BatchFailed(Exception):
    """A transient failure that outlived its retries."""


class _PermanentFailure(Exception):
    """An answer that retrying or falling back cannot fix (4xx other than 408/429, bad 200)."""


TRANSIENT_4XX = (408, 429)


class _LRU:
    """A thread-safe LRU map with ``capacity`` entries (0: nothing is kept)."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._data: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        if self._capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else response.text
    return f"HTTP {response.status_code}: {text[:_DETAIL_LIMIT]}"


class SearchClient:
    """Batched, concurrent, retrying, caching client of a ``/retrieve`` endpoint.

    Args:
      url: the endpoint, e.g. ``http://127.0.0.1:8000/retrieve`` (a bare ``http://host:port``
        gets ``/retrieve`` appended).
      topk: documents per query.
      timeout_s: per HTTP request (connect, read, write, pool).
      max_retries: extra attempts per batch after the first; waits ``backoff_s * 2**i`` (capped
        at ``max_backoff_s``) before retry ``i``.
      max_concurrency: batches in flight at once (threads and pooled connections).
      batch_size: queries per request (keep it within the server's ``--max-queries``).
      cache_size: (query, topk) entries kept in the LRU cache; 0 disables it.
      on_failure: ``"fail"`` raises ``SearchError``; ``"fallback"`` returns failed results.
      max_query_chars: longer queries are cut to this many characters (keep it within the
        server's ``--max-query-chars``) rather than failing their whole batch.
      max_consecutive_failures: under ``"fallback"``, this many failed batches in a row (across
        calls; an answered batch resets the count) raise ``SearchError``; 0: never.

    Use from several threads at once is safe. Close it (or use ``with``) to free the threads.
    """

    def __init__(
        self,
        url: str,
        topk: int = 3,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_concurrency: int = 4,
        batch_size: int = 32,
        cache_size: int = 100_000,
        on_failure: str = "fail",
        max_query_chars: int = 2048,
        max_consecutive_failures: int = 32,
    ):
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}, got {on_failure!r}")
        for name, value in (("topk", topk), ("max_concurrency", max_concurrency), ("batch_size", batch_size),
                            ("max_query_chars", max_query_chars)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("timeout_s", timeout_s), ("max_retries", max_retries), ("backoff_s", backoff_s),
                            ("max_backoff_s", max_backoff_s), ("cache_size", cache_size),
                            ("max_consecutive_failures", max_consecutive_failures)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        parsed = httpx.URL(url)
        self.url = str(parsed.copy_with(path="/retrieve")) if parsed.path in ("", "/") else url
        self.topk = topk
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch_size = batch_size
        self.on_failure = on_failure
        self.max_query_chars = max_query_chars
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0
        self._cache = _LRU(cache_size)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        # trust_env=False: a proxy from the environment must not sit between us and a local retriever.
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            trust_env=False,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="search")
        self._sleep = time.sleep

    # -- metrics ---------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def counters(self) -> dict[str, int]:
        """``{"queries", "cache_hits", "requests", "retries", "failures"}`` since creation (or the
        last reset): queries asked, queries answered from the cache, HTTP requests sent, of which
        retries, and queries that got no answer (under either policy)."""
        with self._lock:
            return dict(self._counts)

    def reset_counters(self) -> dict[str, int]:
        """The counters, then sets them to zero (for per-step metrics)."""
        with self._lock:
            counts, self._counts = self._counts, dict.fromkeys(COUNTERS, 0)
            return counts

    # -- search ----------------------------------------------------------------------------
    def _fetch(self, batch: list[str]) -> list[tuple[Hit, ...]]:
        """Hits for each query of ``batch``; ``_BatchFailed`` once the attempts are spent,
        ``_PermanentFailure`` at once for an answer that no retry can change."""
        payload = {"queries": batch, "topk": self.topk, "return_scores": True}
        cause = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
                self._sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
            self._count("requests")
            try:
                response = self._http.post(self.url, json=payload)
            except httpx.TransportError as e:  # connection refused / reset, timeouts
                cause = f"{type(e).__name__}: {e}"
                continue
            if response.status_code >= 500 or response.status_code in TRANSIENT_4XX:
                cause = _detail(response)
                continue
            if response.status_code >= 400:
                raise _PermanentFailure(f"{_detail(response)} (not retried: a permanent refusal)")
            try:
                return parse_response(response.json(), len(batch))
            except ValueError as e:
                raise _PermanentFailure(f"HTTP {response.status_code} with a malformed response: {e}; "
                                        "is this a Search-R1 /retrieve endpoint?") from None
        raise _BatchFailed(f"{cause} (after {self.max_retries + 1} attempts)")

    def _prepare(self, query: str) -> str:
        return query.strip()[: self.max_query_chars]

    def search(self, queries: Sequence[str]) -> list[SearchResult]:
        """One ``SearchResult`` per query, in order. Raises ``SearchError`` when a batch fails
        and the policy is ``"fail"`` (after every batch has finished)."""
        prepared = [self._prepare(q) for q in queries]
        self._count("queries", len(prepared))
        answers: dict[str, SearchResult] = {}
        todo: list[str] = []
        for q in dict.fromkeys(prepared):
            hits = self._cache.get((q, self.topk)) if q else ()
            if hits is None:
                todo.append(q)
            else:
                answers[q] = SearchResult(q, hits)
        self._count("cache_hits", sum(1 for q in prepared if q and q in answers))

        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        if len(batches) == 1:
            outcomes = [self._outcome(batches[0])]
        else:
            outcomes = list(self._pool.map(self._outcome, batches))
        errors, permanent = [], []
        with self._lock:
            for batch, outcome in zip(batches, outcomes):
                if isinstance(outcome, list):
                    self._consecutive_failures = 0
                    for q, hits in zip(batch, outcome):
                        self._cache.put((q, self.topk), hits)
                        answers[q] = SearchResult(q, hits)
                    continue
                self._consecutive_failures += 1
                (permanent if isinstance(outcome, _PermanentFailure) else errors).append(str(outcome))
                answers.update((q, SearchResult(q, failed=True, error=str(outcome))) for q in batch)
            consecutive = self._consecutive_failures

        failed = sum(1 for q in prepared if answers[q].failed)
        self._count("failures", failed)
        where = f"search at {self.url} failed for {failed} of {len(prepared)} queries"
        if permanent:
            hint = ("; on_failure='fallback' covers only transient failures: fix the request or the "
                    "URL" if self.on_failure == "fallback" else "")
            raise SearchError(f"{where}: {permanent[0]}{hint}")
        if failed and self.on_failure == "fail":
            raise SearchError(f"{where}: {errors[0]}")
        if failed and 0 < self.max_consecutive_failures <= consecutive:
            raise SearchError(f"{where}: {consecutive} request batches in a row failed (limit "
                              f"search.max_consecutive_failures={self.max_consecutive_failures}); "
                              f"the retriever looks down, last error: {errors[-1]}")
        return [replace(answers[p], query=q) for q, p in zip(queries, prepared)]

    def _outcome(self, batch: list[str]) -> list[tuple[Hit, ...]] | Exception:
        """The batch's hits, or the failure."""
        try:
            return self._fetch(batch)
        except (_BatchFailed, _PermanentFailure) as e:
            return e

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
