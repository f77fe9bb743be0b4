"""``RemoteRetriever``: an httpx client of ``agentrl serve retrieval`` or a Search-R1 server.

The wire format is Search-R1's ``POST /retrieve {"queries", "topk", "return_scores"}``, so an
existing Search-R1 retrieval server (wiki-18 + e5 on a GPU box) works unchanged. One pooled
connection set per client; connection failures and 5xx answers are retried with exponential
backoff a bounded number of times, then raise ``ToolError`` naming the URL.
"""
from __future__ import annotations

import time

import httpx

from agentrl.retrieval.base import CachedRetriever, Passage
from agentrl.tools import ToolError

RETRYABLE = (httpx.TransportError,)


def retrieve_url(url: str) -> str:
    """Accept ``http://host:port`` or the full ``.../retrieve`` endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else url + "/retrieve"


class _Client:
    def __init__(self, url: str, timeout_s: float, retries: int, backoff_s: float, max_connections: int):
        self.url = retrieve_url(url)
        self.retries, self.backoff_s = retries, backoff_s
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), limits=limits)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        body = self._post({"queries": list(queries), "topk": k, "return_scores": True})
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
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
    """

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.2,
                 cache_size: int = 10_000, max_connections: int = 32):
        self.url = retrieve_url(url)
        super().__init__(_Client(url, timeout_s, retries, backoff_s, max_connections), max_size=cache_size)

    def close(self) -> None:
        self.retriever.close()

    def __enter__(self) -> "RemoteRetriever":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
