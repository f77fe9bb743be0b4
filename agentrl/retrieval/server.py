"""``agentrl serve retrieval``: an index over HTTP with Search-R1's API, micro-batched.

``POST /retrieve`` takes ``{"queries": [...], "topk": 3, "return_scores": true}`` (or the single
``{"query": "..."}``) and answers ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``
(one list per query, also for the single form; without ``return_scores`` each list holds the
bare documents, as Search-R1 does). Concurrent requests are collected for a few milliseconds and
searched as one batch in a worker thread: one query encoding pass and one index search serve many
clients, which is where a dense backend's throughput comes from. A server-side LRU cache answers
the repeated searches of a GRPO group.

It accepts what Search-R1's own server (``search_r1/search/retrieval_server.py``) accepts, because
Search-R1's and AutoRefine's rollout loop sends every turn's searches in one request and a 4xx kills
the training step: an empty ``queries`` list is ``{"result": []}``; an empty or blank query gets an
empty list in its slot (positions stay aligned); ``topk`` missing, ``null`` or 0 is the server
default (``--topk``); thousands of queries in one request are fine (searched in chunks of
``--max-batch``, so the backend's memory stays bounded; the ``--max-queries`` cap, 100 000 by default,
answers 413 with the limit in ``max_queries``, which ``RemoteRetriever`` uses to split). Only what is
truly malformed (not JSON, wrong types) is a 422 with a message, and nothing is a 500.
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

DEFAULT_TOPK = 3  # Search-R1's `retrieval_server.py --topk` default and its trainer's retriever.topk
MAX_TOPK = 100
MAX_QUERIES = 100_000  # per request; Search-R1 sends up to 512 prompts x 5 rollouts = 2560
MAX_QUERY_CHARS = 4096


class BadRequest(ValueError):
    """Client error: answered with HTTP 422 and this message."""

    status_code = 422

    def body(self) -> dict:
        return {"detail": str(self)}


class TooManyQueries(BadRequest):
    """More queries than ``--max-queries`` in one request: HTTP 413 naming the limit, so a client can split."""

    status_code = 413

    def __init__(self, n: int, limit: int):
        super().__init__(f"too many queries in one request ({n} > {limit}); split the batch (max_queries={limit})")
        self.limit = limit

    def body(self) -> dict:
        return {"detail": str(self), "max_queries": self.limit}


def _indices(label: str, idx: list[int], what: str, shown: int = 10) -> str:
    more = f" and {len(idx) - shown} more" if len(idx) > shown else ""
    return f"{label} {', '.join(map(str, idx[:shown]))}{more} {what}"


def parse_request(body: bytes, max_query_chars: int = MAX_QUERY_CHARS, default_topk: int = DEFAULT_TOPK,
                  max_queries: int = MAX_QUERIES) -> tuple[list[str], int, bool, list[str]]:
    """Validate a request body -> (queries, topk, return_scores, warnings); raise ``BadRequest``.

    Blank queries come back as ``""`` (the caller answers them with no passages, in their slot);
    ``topk`` missing, ``null`` or 0 is ``default_topk`` (Search-R1: ``if not request.topk``).
    """
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
    if not isinstance(queries, list):
        raise BadRequest(f"'queries' must be a list of strings, got {type(queries).__name__}")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise BadRequest(f"query {i} must be a string, got {type(q).__name__}")
    if len(queries) > max_queries:
        raise TooManyQueries(len(queries), max_queries)
    topk = req.get("topk")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or not 0 <= topk <= MAX_TOPK):
        raise BadRequest(f"'topk' must be an integer in 1..{MAX_TOPK} (or null/0 for the server default {default_topk}), got {topk!r}")
    topk = topk or default_topk
    return_scores = req.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(f"'return_scores' must be true or false, got {return_scores!r}")
    warnings = []
    blank = [i for i, q in enumerate(queries) if not q.strip()]
    if blank:
        warnings.append(_indices("query" if len(blank) == 1 else "queries", blank, "empty: no passages"))
    long = [i for i, q in enumerate(queries) if len(q) > max_query_chars and q.strip()]
    if long:
        warnings.append(_indices("query" if len(long) == 1 else "queries", long, f"truncated to {max_query_chars} characters"))
    return [q[:max_query_chars] if q.strip() else "" for q in queries], topk, return_scores, warnings


def to_wire(passages: list[Passage], return_scores: bool) -> list:
    docs = [{"id": p.id, "contents": p.contents} for p in passages]
    return [{"document": d, "score": p.score} for d, p in zip(docs, passages)] if return_scores else docs


class MicroBatcher:
    """Requests wait in a queue; one task drains it into batches searched in a worker thread.

    No backend call ever sees more than ``max_batch`` queries: a large request is cut into chunks
    of ``max_batch``, and it queues its next chunk only when the previous one is answered, so the
    queue stays short, other clients' requests interleave with a big one, and the backend's memory
    (query embeddings, score rows) is bounded by ``max_batch`` whatever a request holds.
    """

    def __init__(self, retriever: Retriever, max_batch: int = 64, wait_ms: float = 2.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.retriever, self.max_batch, self.wait_s = retriever, max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self._carry: tuple | None = None  # an item that did not fit the last batch: it opens the next
        self.batches = 0
        self.batched_queries = 0
        self.largest_batch = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        results: list[list[Passage]] = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queries), self.max_batch):
            future = loop.create_future()
            await self.queue.put((queries[start : start + self.max_batch], k, future))
            results.extend(await future)
        return results

    async def _collect(self) -> list:
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self.queue.get()
        batch, size = [first], len(first[0])
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
            if size + len(item[0]) > self.max_batch:  # would overflow: it starts the next batch instead
                self._carry = item
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
            self.largest_batch = max(self.largest_batch, len(queries))
            start = 0
            for qs, own_k, future in batch:
                if not future.done():
                    future.set_result([r[:own_k] for r in results[start : start + len(qs)]])
                start += len(qs)


class Stats:
    def __init__(self, window: int = 10_000):
        self.requests = 0
        self.queries = 0
        self.rejected = 0
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=window)
        self.started = time.time()

    def snapshot(self, batcher: MicroBatcher, retriever) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        out = {
            "requests": self.requests,
            "queries": self.queries,
            "rejected": self.rejected,
            "batches": batcher.batches,
            "batched_queries": batcher.batched_queries,
            "largest_batch": batcher.largest_batch,
            "mean_batch_size": batcher.batched_queries / batcher.batches if batcher.batches else 0.0,
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "uptime_s": round(time.time() - self.started, 1),
        }
        if isinstance(retriever, CachedRetriever):
            out.update(retriever.stats())
        return out


def create_app(retriever: Retriever, cache_size: int = 10_000, max_batch: int = 64, wait_ms: float = 2.0,
               max_query_chars: int = MAX_QUERY_CHARS, info: dict | None = None, topk: int = DEFAULT_TOPK,
               max_queries: int = MAX_QUERIES):
    """The FastAPI app serving ``retriever`` (wrapped in an LRU cache unless ``cache_size`` is 0).

    ``topk`` answers requests without one; ``max_queries`` caps one request (413 beyond it); the
    backend is called with at most ``max_batch`` queries at a time.
    """
    if not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"default topk must be in 1..{MAX_TOPK}, got {topk}")
    if max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, got {max_queries}")
    if cache_size > 0 and not isinstance(retriever, CachedRetriever):
        retriever = CachedRetriever(retriever, cache_size)
    batcher = MicroBatcher(retriever, max_batch, wait_ms)
    stats = Stats()
    limits = {"max_queries": max_queries, "max_batch": max_batch, "topk": topk, "max_topk": MAX_TOPK}

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
            queries, k, return_scores, warnings = parse_request(await request.body(), max_query_chars, topk, max_queries)
        except BadRequest as e:
            stats.rejected += 1
            return JSONResponse(e.body(), status_code=e.status_code)
        asked = [i for i, q in enumerate(queries) if q]  # blank queries match nothing: not searched
        try:
            found = await batcher.search([queries[i] for i in asked], k) if asked else []
        except Exception as e:
            return JSONResponse({"detail": f"retrieval backend failed: {type(e).__name__}: {e}"}, status_code=503)
        results: list[list[Passage]] = [[] for _ in queries]
        for i, r in zip(asked, found):
            results[i] = r
        body = {"result": [to_wire(r, return_scores) for r in results]}
        if warnings:
            body["warnings"] = warnings
        stats.requests += 1
        stats.queries += len(queries)
        stats.latencies_ms.append((time.perf_counter() - start) * 1000)
        return JSONResponse(body)

    @app.get("/health")
    async def health():
        return {"status": "ok", **limits, **(info or {})}

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
    parser.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                        help=f"passages per query when a request's topk is missing, null or 0, as in Search-R1 (default {DEFAULT_TOPK}; "
                             f"a request may ask for 1..{MAX_TOPK})")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="most queries the backend searches at once: larger requests are searched in chunks of this "
                             "size, which bounds the backend's memory (default 64; raise it for a GPU dense encoder, e.g. 512)")
    parser.add_argument("--max-queries", type=int, default=MAX_QUERIES,
                        help=f"most queries in one request (default {MAX_QUERIES:,}; Search-R1 sends up to 512 prompts x 5 "
                             "rollouts = 2,560); beyond it the answer is HTTP 413 with max_queries, and RemoteRetriever splits")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")


def cli_main(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrl.retrieval.index import load_retriever

    retriever = load_retriever(args.index, kind=args.kind)
    m = retriever.manifest
    info = {"kind": args.kind or m["kind"], "count": m["count"], "model": m.get("model"), "index": str(args.index)}
    app = create_app(retriever, args.cache_size, args.max_batch, args.batch_wait_ms, info=info, topk=args.topk,
                     max_queries=args.max_queries)
    print(f"serving {info['kind']} index of {m['count']} passages on http://{args.host}:{args.port}/retrieve", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
