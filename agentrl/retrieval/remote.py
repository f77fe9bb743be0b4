"""``RemoteRetriever``: an httpx client of ``agentrl serve retrieval`` or a Search-R1 server.

The wire format is Search-R1's ``POST /retrieve {"queries", "topk", "return_scores"}``, so an
existing Search-R1 retrieval server (wiki-18 + e5 on a GPU box) works unchanged. One pooled
connection set per client; connection failures and 5xx answers are retried with exponential
backoff a bounded number of times, then raise ``ToolError`` naming the URL.

A batch larger than the server takes in one request is split here: ``max_queries=`` sets the
request size up front, and a server that answers 413 with its ``max_queries`` (``agentrl serve
retrieval --max-queries``; an older agentrl server's 422 "too many queries (n > limit)" too)
teaches the client its limit, which it keeps for later batches.
"""
from __future__ import annotations

import re
import time

import httpx

from agentrl.retrieval.base import CachedRetriever, Passage
from agentrl.tools import ToolError

RETRYABLE = (httpx.TransportError,)
_TOO_MANY = re.compile(r"too many queries in one request \((\d+) > (\d+)\)")


class _TooManyQueries(Exception):
    def __init__(self, limit: int):
        self.limit = limit


def _server_limit(response: httpx.Response, sent: int) -> int | None:
    """The per-request query limit a rejection states, if it is one and below what was sent."""
    if response.status_code not in (413, 422):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    limit = body.get("max_queries") if isinstance(body, dict) else None
    if limit is None and isinstance(body, dict):  # an agentrl server from before 413: only the message says it
        m = _TOO_MANY.search(str(body.get("detail", "")))
        limit = int(m.group(2)) if m else None
    if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit < sent:
        return limit
    return None


def retrieve_url(url: str) -> str:
    """Accept ``http://host:port`` or the full ``.../retrieve`` endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else url + "/retrieve"


class _Client:
    def __init__(self, url: str, timeout_s: float, retries: int, backoff_s: float, max_connections: int,
                 max_queries: int | None = None):
        if max_queries is not None and max_queries < 1:
            raise ValueError(f"max_queries must be at least 1 (or None), got {max_queries}")
        self.url = retrieve_url(url)
        self.retries, self.backoff_s = retries, backoff_s
        self.max_queries = max_queries
        self.requests = 0
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), limits=limits)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        queries = list(queries)
        out: list[list[Passage]] = []
        start = 0
        while start < len(queries):
            chunk = queries[start : start + (self.max_queries or len(queries))]
            try:
                out.extend(self._search_chunk(chunk, k))
            except _TooManyQueries as e:  # the server said how many it takes: split from here on
                self.max_queries = e.limit
                continue
            start += len(chunk)
        return out

    def _search_chunk(self, queries: list[str], k: int) -> list[list[Passage]]:
        body = self._post({"queries": queries, "topk": k, "return_scores": True})
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != len(queries) or not all(isinstance(r, list) for r in result):
            raise ToolError(f"retrieval server at {self.url} sent a malformed answer (expected 'result' with {len(queries)} lists)")
        return [[_parse_item(item) for item in items] for items in result]

    def _post(self, payload: dict) -> dict:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self.http.post(self.url, json=payload)
            except RETRYABLE as e:
                last = e
                continue
            self.requests += 1
            limit = _server_limit(response, len(payload["queries"]))
            if limit is not None:
                raise _TooManyQueries(limit)
            if response.status_code >= 500:
                last = ToolError(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
            if response.status_code >= 400:  # our request is wrong: retrying will not help
                raise ToolError(f"retrieval server at {self.url} rejected the request: HTTP {response.status_code}: {response.text[:300]}")
            return response.json()
        raise ToolError(f"retrieval server at {self.url} unreachable after {self.retries + 1} attempts: {type(last).__name__}: {last}")

    def close(self) -> None:
        self.http.close()


def _parse_item(item) -> Passage:
    """Search-R1 answers ``{"document": {...}, "score": s}`` with scores, bare documents without."""
    if isinstance(item, dict) and isinstance(item.get("document"), dict):
        return Passage.from_document(item["document"], float(item.get("score") or 0.0))
    if isinstance(item, dict):
        return Passage.from_document(item, float(item.get("score") or 0.0))
    return Passage("", "", str(item), 0.0)


class RemoteRetriever(CachedRetriever):
    """A ``Retriever`` over HTTP with a client-side LRU cache of (query, k) answers.

    ``cache_size=0`` still folds duplicate queries within one batch into one request entry.
    ``max_queries`` (default: no limit until the server states one) is the most queries sent in
    one request; larger batches go out as several requests, answers in order.
    """

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.2,
                 cache_size: int = 10_000, max_connections: int = 32, max_queries: int | None = None):
        self.url = retrieve_url(url)
        super().__init__(_Client(url, timeout_s, retries, backoff_s, max_connections, max_queries), max_size=cache_size)

    @property
    def max_queries(self) -> int | None:
        """Queries per request: as configured, or as the server said it takes."""
        return self.retriever.max_queries

    def close(self) -> None:
        self.retriever.close()

    def __enter__(self) -> "RemoteRetriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
