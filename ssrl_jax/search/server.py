"""The retriever server: Search-R1's ``/retrieve`` API over an index directory (SPEC §7).

    python -m ssrl_jax.search.server --index DIR [--host 127.0.0.1] [--port 8000]

``POST /retrieve`` with ``{"queries": [str, ...], "topk": 3, "return_scores": true}`` →

- ``return_scores`` true: ``{"result": [[{"document": {"id": str, "contents": str}, "score": float},
  ...], ...]}``;
- ``return_scores`` false (the default, as in Search-R1): ``{"result": [[{"id": str, "contents":
  str}, ...], ...]}``.

One list per query, in request order, best first, at most ``topk`` long (shorter when fewer
documents match). Every request Search-R1's own client sends is answered as Search-R1's server
answers it (docs/search.md has the table): ``{"queries": []}`` gets ``{"result": []}``; an empty
query is searched like any other (BM25: no terms, no documents; dense: the embedding of the
empty query, ``topk`` documents); ``topk`` missing, null or 0 means the server's ``--topk``; a
query longer than ``max_query_chars`` is cut to that length (as a dense encoder truncates its
input) rather than refused. ``GET /health`` → ``{"status": "ok", "documents": N, "kind": "bm25" |
"dense", "limits": {...}}``.

Bad requests get a 4xx JSON ``{"detail": "..."}`` that says what is wrong and the limit: 400 for
a body that is not a JSON object, 422 for a field of the wrong type or value (``topk`` negative or
over ``max_topk``), 413 for more than ``max_queries`` queries or a body over ``max_body_bytes``,
408 (and the connection closed) for a body that does not arrive within ``body_timeout_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ssrl_jax.cli_errors import ArgumentParser, cli_main, exit_user_error, user_message
from ssrl_jax.search.retriever import Hit, Retriever

__all__ = ["Limits", "create_app", "main", "parse_request"]

log = logging.getLogger("ssrl_jax.search.server")


@dataclass(frozen=True)
class Limits:
    """Per-request limits of ``/retrieve``.

    ``max_queries`` covers Search-R1's largest request (its client sends one query per searching
    row of a rollout batch: 512 prompts × 5 responses = 2,560); ``max_body_bytes`` holds that
    many queries of ``max_query_chars``; ``body_timeout_s`` bounds how long a request body may
    take to arrive, so a stalled client cannot hold a connection open.
    """

    max_queries: int = 4096
    max_query_chars: int = 2048
    max_topk: int = 100
    default_topk: int = 3
    max_body_bytes: int = 32 << 20
    body_timeout_s: float = 30.0

    def __post_init__(self):
        for name in ("max_queries", "max_query_chars", "max_topk", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.default_topk <= self.max_topk:
            raise ValueError(f"default_topk must be in [1, {self.max_topk}], got {self.default_topk}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` (4xx) and a ``detail`` for the caller."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], int, bool]:
    """Validates a ``/retrieve`` body; returns ``(queries, topk, return_scores)`` or raises
    ``RequestError``. Unknown keys are ignored, as pydantic does in Search-R1's server; what
    Search-R1's server accepts is accepted (module docstring), queries cut to
    ``max_query_chars``."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON body: {e}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {_type_name(payload)}")

    queries = payload.get("queries")
    if not isinstance(queries, list):
        what = "missing" if "queries" not in payload else f"a {_type_name(queries)}"
        raise RequestError(422, f"'queries' must be a list of strings, got {what}")
    if len(queries) > limits.max_queries:
        raise RequestError(413, f"too many queries: {len(queries)}; the limit is {limits.max_queries} per request")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise RequestError(422, f"queries[{i}] must be a string, got {_type_name(q)}")
    queries = [q[: limits.max_query_chars] for q in queries]

    topk = payload.get("topk")
    if isinstance(topk, bool) or not (topk is None or isinstance(topk, int)):
        raise RequestError(422, f"'topk' must be an integer, got {_type_name(topk)}")
    if not topk:  # null or 0: the server's default, as Search-R1's `if not request.topk`
        topk = limits.default_topk
    elif not 1 <= topk <= limits.max_topk:
        raise RequestError(422, f"'topk' must be 0 (the default, {limits.default_topk}) or between 1 and "
                                f"{limits.max_topk}, got {topk}")

    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(422, f"'return_scores' must be true or false, got {_type_name(return_scores)}")
    return queries, topk, return_scores


def format_result(hits: list[list[Hit]], return_scores: bool) -> dict[str, Any]:
    """The ``/retrieve`` response body for ``hits`` (``[queries][<= topk]``)."""
    if return_scores:
        return {"result": [[{"document": h.document(), "score": h.score} for h in row] for row in hits]}
    return {"result": [[h.document() for h in row] for row in hits]}


class BodyTimeout(RequestError):
    """The body did not arrive in time: 408, and the connection is closed."""


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``max_bytes``, and with 408
    when all of it has not arrived ``timeout_s`` after the headers."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"the body has {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestError(413, f"the body has more than {max_bytes} bytes; the limit is {max_bytes}")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise BodyTimeout(408, f"the request body did not arrive within {timeout_s:g} s ({size} bytes "
                               "received); the connection is closed") from None
    return b"".join(chunks)


def create_app(
    retriever: Retriever,
    *,
    max_queries: int = Limits.max_queries,
    max_query_chars: int = Limits.max_query_chars,
    max_topk: int = Limits.max_topk,
    default_topk: int = Limits.default_topk,
    max_body_bytes: int = Limits.max_body_bytes,
    body_timeout_s: float = Limits.body_timeout_s,
) -> FastAPI:
    """A FastAPI app serving ``retriever`` at ``POST /retrieve`` and ``GET /health``."""
    limits = Limits(max_queries, max_query_chars, max_topk, default_topk, max_body_bytes, body_timeout_s)
    app = FastAPI(title="ssrl_jax retriever", docs_url=None, redoc_url=None)
    app.state.retriever = retriever
    app.state.limits = limits

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError) -> JSONResponse:
        # A half-read body leaves the connection unusable: close it (uvicorn honours the header).
        headers = {"connection": "close"} if isinstance(e, BodyTimeout) else None
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=headers)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "documents": retriever.num_documents, "kind": retriever.kind,
                "limits": dataclasses.asdict(limits)}

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        body = await _read_body(request, limits.max_body_bytes, limits.body_timeout_s)
        queries, topk, return_scores = parse_request(body, limits)
        try:
            # Retrieval is CPU-bound: run it on the worker threads, not on the event loop.
            hits = await run_in_threadpool(retriever.search, queries, topk)
        except Exception as e:
            log.exception("retrieval failed for %d queries", len(queries))
            return JSONResponse({"detail": f"retrieval failed: {type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse(format_result(hits, return_scores))

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m ssrl_jax.search.server", description=__doc__.split("\n")[0])
    p.add_argument("--index", required=True, help="index directory built by `python -m ssrl_jax.search.index`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--topk", type=int, default=Limits.default_topk, help="topk when a request sends none")
    p.add_argument("--max-queries", type=int, default=Limits.max_queries, help="queries per request")
    p.add_argument("--max-query-chars", type=int, default=Limits.max_query_chars,
                   help="characters per query; longer queries are cut to this length")
    p.add_argument("--max-topk", type=int, default=Limits.max_topk)
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes)
    p.add_argument("--body-timeout", type=float, default=Limits.body_timeout_s,
                   help="seconds a request body may take to arrive (408 and the connection closed after)")
    p.add_argument("--keep-alive-timeout", type=int, default=5,
                   help="seconds an idle keep-alive connection is kept open")
    p.add_argument("--model", help="dense index: sentence-transformers directory overriding index.json's")
    p.add_argument("--device", help="dense index: torch device for the query encoder (e.g. cpu, cuda)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    from ssrl_jax.search.index import keep_jax_on_cpu
    from ssrl_jax.search.retriever import load_retriever

    keep_jax_on_cpu()
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        dense = {"model": args.model, "device": args.device}
        retriever = load_retriever(args.index, **{k: v for k, v in dense.items() if v is not None})
        app = create_app(
            retriever,
            max_queries=args.max_queries,
            max_query_chars=args.max_query_chars,
            max_topk=args.max_topk,
            default_topk=args.topk,
            max_body_bytes=args.max_body_bytes,
            body_timeout_s=args.body_timeout,
        )
    except (OSError, ValueError, ImportError) as e:
        exit_user_error(user_message(e) or str(e))
    if not _is_loopback(args.host):
        log.warning("listening on %s: the retriever has no authentication; anyone who can reach it may query it",
                    args.host)
    log.info("serving %s index of %d documents from %s", retriever.kind, retriever.num_documents, args.index)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                timeout_keep_alive=args.keep_alive_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
