"""``agentrl serve retrieval``: an index over HTTP with Search-R1's API, micro-batched.

``POST /retrieve`` takes ``{"queries": [...], "topk": 3, "return_scores": true}`` (or the single
``{"query": "..."}``) and answers ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``
(one list per query, also for the single form; without ``return_scores`` each list holds the
bare documents, as Search-R1 does). Concurrent requests are collected for a few milliseconds and
searched as one batch in a worker thread: one query encoding pass and one index search serve many
clients, which is where a dense backend's throughput comes from. A server-side LRU cache answers
the repeated searches of a GRPO group. Bad input is a 422 with a message, never a 500.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import threading
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentrl.retrieval.base import CachedRetriever, Passage, Retriever

MAX_TOPK = 100
MAX_QUERIES = 1024
MAX_QUERY_CHARS = 4096


class BadRequest(ValueError):
    """Client error: answered with HTTP 422 and this message."""


def parse_request(body: bytes, max_query_chars: int = MAX_QUERY_CHARS) -> tuple[list[str], int, bool, list[str]]:
    """Validate a request body -> (queries, topk, return_scores, warnings); raise ``BadRequest``."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise BadRequest('body must be a JSON object like {"queries": ["..."], "topk": 3}')
    if "queries" in req:
        queries = req["queries"]
    elif "query" in req:
        queries = [req["query"]]
    else:
        raise BadRequest("missing 'queries' (a list of strings) or 'query' (a string)")
    if not isinstance(queries, list) or not queries:
        raise BadRequest("'queries' must be a non-empty list of strings")
    if len(queries) > MAX_QUERIES:
        raise BadRequest(f"too many queries in one request ({len(queries)} > {MAX_QUERIES})")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise BadRequest(f"query {i} must be a string, got {type(q).__name__}")
        if not q.strip():
            raise BadRequest(f"query {i} is empty")
    topk = req.get("topk", 3)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise BadRequest(f"'topk' must be an integer in 1..{MAX_TOPK}, got {topk!r}")
    return_scores = req.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(f"'return_scores' must be true or false, got {return_scores!r}")
    warnings = [f"query {i} truncated from {len(q)} to {max_query_chars} characters"
                for i, q in enumerate(queries) if len(q) > max_query_chars]
    return [q[:max_query_chars] for q in queries], topk, return_scores, warnings


def to_wire(passages: list[Passage], return_scores: bool) -> list:
    docs = [{"id": p.id, "contents": p.contents} for p in passages]
    return [{"document": d, "score": p.score} for d, p in zip(docs, passages)] if return_scores else docs


class MicroBatcher:
    """Requests wait in a queue; one task drains it into batches searched in a worker thread."""

    def __init__(self, retriever: Retriever, max_batch: int = 64, wait_ms: float = 2.0):
        self.retriever, self.max_batch, self.wait_s = retriever, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.batched_queries = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((queries, k, future))
        return await future

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        size = len(batch[0][0])
        deadline = time.monotonic() + self.wait_s
        while size < self.max_batch:
            try:  # whatever queued up while the last batch ran, then a short wait for stragglers
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(item)
            size += len(item[0])
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            queries = [q for qs, _, _ in batch for q in qs]
            k = max(k for _, k, _ in batch)
            try:
                results = await asyncio.to_thread(self.retriever.search, queries, k)
            except Exception as e:  # the backend failed: every waiting request hears why
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.batched_queries += len(queries)
            start = 0
            for qs, own_k, future in batch:
                if not future.done():
                    future.set_result([r[:own_k] for r in results[start : start + len(qs)]])
                start += len(qs)


class Stats:
    def __init__(self, window: int = 10_000):
        self.requests = 0
        self.rejected = 0
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.started = time.time()

    def snapshot(self, batcher: MicroBatcher, retriever) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        out = {
            "requests": self.requests,
            "rejected": self.rejected,
            "batches": batcher.batches,
            "batched_queries": batcher.batched_queries,
            "mean_batch_size": batcher.batched_queries / batcher.batches if batcher.batches else 0.0,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "uptime_s": round(time.time() - self.started, 1),
        }
        if isinstance(retriever, CachedRetriever):
            out.update(retriever.stats())
        return out


def create_app(retriever: Retriever, cache_size: int = 10_000, max_batch: int = 64, wait_ms: float = 2.0,
               max_query_chars: int = MAX_QUERY_CHARS, info: dict | None = None):
    """The FastAPI app serving ``retriever`` (wrapped in an LRU cache unless ``cache_size`` is 0)."""
    if cache_size > 0 and not isinstance(retriever, CachedRetriever):
        retriever = CachedRetriever(retriever, cache_size)
    batcher = MicroBatcher(retriever, max_batch, wait_ms)
    stats = Stats()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="agentrl retrieval", lifespan=lifespan)

    @app.post("/retrieve")
    async def retrieve(request: Request):
        start = time.perf_counter()
        try:
            queries, k, return_scores, warnings = parse_request(await request.body(), max_query_chars)
        except BadRequest as e:
            stats.rejected += 1
            return JSONResponse({"detail": str(e)}, status_code=422)
        try:
            results = await batcher.search(queries, k)
        except Exception as e:
            return JSONResponse({"detail": f"retrieval backend failed: {type(e).__name__}: {e}"}, status_code=503)
        body = {"result": [to_wire(r, return_scores) for r in results]}
        if warnings:
            body["warnings"] = warnings
        stats.requests += 1
        stats.latencies_ms.append((time.perf_counter() - start) * 1000)
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", **(info or {})}

    @app.get("/stats")
    async def get_stats():
        return stats.snapshot(batcher, retriever)

    return app


class BackgroundServer:
    """uvicorn in a daemon thread on ``host:port`` (port 0 = ephemeral); for tests and benchmarks."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("retrieval server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory from `agentrl index build`")
    parser.add_argument("--kind", choices=("bm25", "dense", "hybrid"), default=None, help="one backend of a hybrid index")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cache-size", type=int, default=10_000, help="LRU entries of (query, topk); 0 disables")
    parser.add_argument("--max-batch", type=int, default=64, help="most queries searched in one batch")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")


def cli_main(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrl.retrieval.index import load_retriever

    retriever = load_retriever(args.index, kind=args.kind)
    m = retriever.manifest
    info = {"kind": args.kind or m["kind"], "count": m["count"], "model": m.get("model"), "index": str(args.index)}
    app = create_app(retriever, args.cache_size, args.max_batch, args.batch_wait_ms, info=info)
    print(f"serving {info['kind']} index of {m['count']} passages on http://{args.host}:{args.port}/retrieve", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
