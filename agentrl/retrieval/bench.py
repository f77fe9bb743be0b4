"""``agentrl bench retrieval``: retrieval quality and speed on the shipped corpus.

Quality: recall@1/5/10 of the supporting paragraphs (matched by title) for the non-heldout
HotpotQA / MuSiQue questions that carry ``supporting_titles``, for BM25, dense and hybrid.
Speed: build time, in-process queries/s at batch 1 and 64, the HTTP server's throughput and
latency at 1/8/32 concurrent clients against 32 sequential requests (micro-batching), and bm25s
against ``rank_bm25`` on the same tokens. Embedding the whole corpus takes ~10 min on 2 cores:
pass ``--dense-index`` to reuse a built index, or ``--dense-limit`` to measure on a prefix
(all backends are then scored on that same prefix, and the report says so).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from agentrl.data import load_jsonl
from agentrl.retrieval.base import iter_corpus
from agentrl.retrieval.index import build_index, load_retriever

KS = (1, 5, 10)


def eval_questions(qa_dir: Path, titles: set[str]) -> list[dict]:
    """Non-heldout questions with supporting titles, all of which the index holds."""
    rows = []
    for name in ("hotpotqa.jsonl", "musique.jsonl"):
        for r in load_jsonl(qa_dir / name):
            if r.get("supporting_titles") and r.get("in_corpus") and not r.get("heldout") and set(r["supporting_titles"]) <= titles:
                rows.append(r)
    return rows


def recall_at_k(retriever, questions: list[dict], batch: int = 64) -> dict[str, float]:
    hits = {k: [] for k in KS}
    for i in range(0, len(questions), batch):
        chunk = questions[i : i + batch]
        for q, res in zip(chunk, retriever.search([q["question"] for q in chunk], max(KS))):
            gold = set(q["supporting_titles"])
            for k in KS:
                hits[k].append(len(gold & {p.title for p in res[:k]}) / len(gold))
    return {f"recall@{k}": round(float(np.mean(v)), 4) for k, v in hits.items()}


def queries_per_second(retriever, queries: list[str], batch: int, min_queries: int = 64) -> float:
    n, start = 0, time.perf_counter()
    while n < min_queries:
        for i in range(0, len(queries), batch):
            retriever.search(queries[i : i + batch], 10)
            n += len(queries[i : i + batch])
            if n >= min_queries and time.perf_counter() - start > 1.0:
                break
    return round(n / (time.perf_counter() - start), 1)


# -- server ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, kind: str) -> tuple[subprocess.Popen, str]:
    """The real CLI server in its own process (clients here do not share its GIL); cache off."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "agentrl.cli", "serve", "retrieval", "--index", str(index_dir), "--kind", kind,
           "--port", str(port), "--cache-size", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server at {url} did not come up")


def load_test(url: str, queries: list[str], clients: int) -> dict:
    """Each client sends single-query requests back to back; throughput and latency percentiles."""
    import httpx

    per_client = [queries[i::clients] for i in range(clients)]
    before = httpx_get_json(f"{url}/stats")

    def run(qs: list[str]) -> list[float]:
        lat = []
        with httpx.Client(timeout=60) as c:
            for q in qs:
                t = time.perf_counter()
                c.post(f"{url}/retrieve", json={"queries": [q], "topk": 10}).raise_for_status()
                lat.append((time.perf_counter() - t) * 1000)
        return lat

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        lat = [x for part in pool.map(run, per_client) for x in part]
    wall = time.perf_counter() - start
    after = httpx_get_json(f"{url}/stats")
    batches = max(1, after["batches"] - before["batches"])
    return {"clients": clients, "mean_batch": round((after["batched_queries"] - before["batched_queries"]) / batches, 1), "requests": len(lat), "req_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def httpx_get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=10).json()


def bench_server(index_dir: Path, kind: str, queries: list[str], n_requests: int) -> dict:
    proc, url = start_server(index_dir, kind)
    try:
        load_test(url, queries[:8], 1)  # warm-up
        out = {"sequential_32": load_test(url, queries[:32], 1)}
        for clients in (1, 8, 32):
            out[f"concurrent_{clients}"] = load_test(url, queries[:n_requests], clients)
        out["server_stats"] = httpx_get_json(f"{url}/stats")
        out["speedup_32_vs_sequential"] = round(out["concurrent_32"]["req_per_s"] / out["sequential_32"]["req_per_s"], 2)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_rank_bm25(passages, queries: list[str], n: int = 30) -> dict:
    """Same tokens (bm25s's stemmed, stopword-free tokenizer) into both libraries."""
    from rank_bm25 import BM25Okapi

    from agentrl.retrieval.bm25 import BM25Retriever, make_tokenizer

    tok = make_tokenizer()
    corpus_tokens = tok([f"{p.title} {p.text}" for p in passages], vocab=True)
    t = time.perf_counter()
    okapi = BM25Okapi(corpus_tokens)
    okapi_build = time.perf_counter() - t
    t = time.perf_counter()
    ours = BM25Retriever(passages)
    ours_build = time.perf_counter() - t
    qs = queries[:n]
    t = time.perf_counter()
    for q in tok(qs, vocab=True):
        np.argsort(-okapi.get_scores(q))[:10]
    okapi_ms = (time.perf_counter() - t) * 1000 / len(qs)
    t = time.perf_counter()
    for q in qs:
        ours.search([q], 10)
    ours_ms = (time.perf_counter() - t) * 1000 / len(qs)
    return {"queries": len(qs), "rank_bm25_ms_per_query": round(okapi_ms, 2), "bm25s_ms_per_query": round(ours_ms, 3),
            "speedup": round(okapi_ms / ours_ms, 1), "rank_bm25_build_s": round(okapi_build, 2), "bm25s_build_s": round(ours_build, 2)}


# -- report ------------------------------------------------------------------------------------
def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    q = Table(title=f"retrieval quality: {report['n_questions']} questions, {report['n_passages']} passages{report['scope_note']}")
    for col in ("backend", *[f"recall@{k}" for k in KS], "build s", "q/s batch 1", "q/s batch 64"):
        q.add_column(col, justify="right")
    for name, r in report["backends"].items():
        q.add_row(name, *[f"{r[f'recall@{k}']:.3f}" for k in KS], str(r.get("build_s", "")), str(r["qps_batch_1"]), str(r["qps_batch_64"]))
    console.print(q)
    for kind, s in report.get("server", {}).items():
        t = Table(title=f"server ({kind}, cache off): 32 concurrent vs 32 sequential = {s['speedup_32_vs_sequential']}x")
        for col in ("mode", "requests", "req/s", "p50 ms", "p99 ms", "mean batch"):
            t.add_column(col, justify="right")
        for mode, r in s.items():
            if isinstance(r, dict) and "req_per_s" in r:
                t.add_row(mode, str(r["requests"]), str(r["req_per_s"]), str(r["p50_ms"]), str(r["p99_ms"]), str(r["mean_batch"]))
        console.print(t)
    if "bm25s_vs_rank_bm25" in report:
        r = report["bm25s_vs_rank_bm25"]
        console.print(f"bm25s {r['bm25s_ms_per_query']} ms/query vs rank_bm25 {r['rank_bm25_ms_per_query']} ms/query: {r['speedup']}x faster "
                      f"(build {r['bm25s_build_s']} s vs {r['rank_bm25_build_s']} s)")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="../shared/data", help="folder with corpus/wiki_multihop.jsonl.gz and qa/")
    parser.add_argument("--work", default="runs/bench_retrieval", help="where indexes are built (dense chunks are reused)")
    parser.add_argument("--dense-index", default=None, help="a built dense or hybrid index to reuse instead of embedding")
    parser.add_argument("--dense-limit", type=int, default=2000, help="embed only the first N paragraphs (0 = whole corpus)")
    parser.add_argument("--no-dense", action="store_true", help="BM25 only")
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--server-requests", type=int, default=256)
    parser.add_argument("--out", default="runs/bench_retrieval/retrieval.json")


def cli_main(args: argparse.Namespace) -> int:
    data, work = Path(args.data), Path(args.work)
    corpus = data / "corpus" / "wiki_multihop.jsonl.gz"
    if not corpus.is_file():
        print(f"corpus not found: {corpus} (pass --data)", file=sys.stderr)
        return 2
    dense_dir = Path(args.dense_index) if args.dense_index else work / "dense"
    if not args.no_dense and not args.dense_index:
        build_index(corpus, dense_dir, "dense", args.dense_limit or None)
    limit = None if args.no_dense else (load_retriever(dense_dir, kind="dense").manifest["count"])
    total = sum(1 for _ in iter_corpus(corpus))
    limit = None if limit == total else limit
    bm25_manifest = build_index(corpus, work / "bm25", "bm25", limit, show_progress=False)
    backends = {"bm25": load_retriever(work / "bm25")}
    if not args.no_dense:
        from agentrl.retrieval.hybrid import HybridRetriever

        backends["dense"] = load_retriever(dense_dir, kind="dense")
        backends["hybrid"] = HybridRetriever([backends["bm25"], backends["dense"]])
    passages = backends["bm25"].passages
    questions = eval_questions(data / "qa", {p.title for p in passages})
    queries = [q["question"] for q in questions]
    report = {"n_questions": len(questions), "n_passages": len(passages), "corpus_passages": total,
              "scope_note": "" if limit is None else f" (first {limit} of {total} paragraphs; questions fully inside them)",
              "backends": {}}
    for name, r in backends.items():
        report["backends"][name] = {**recall_at_k(r, questions), "qps_batch_1": queries_per_second(r, queries, 1),
                                    "qps_batch_64": queries_per_second(r, queries, 64, min_queries=256)}
    report["backends"]["bm25"]["build_s"] = bm25_manifest["build_seconds"]
    if "dense" in backends:
        m = backends["dense"].manifest
        report["backends"]["dense"]["build_s"] = m.get("build_seconds")
        report["dense_manifest"] = {k: m.get(k) for k in ("count", "model", "dimension", "index_type", "build_seconds")}
    report["bm25s_vs_rank_bm25"] = bench_rank_bm25(list(iter_corpus(corpus)), queries)  # always the whole corpus
    if not args.no_server:
        server_queries = (queries * 4)[: max(args.server_requests, 32)]
        report["server"] = {"bm25": bench_server(work / "bm25", "bm25", server_queries, args.server_requests)}
        if not args.no_dense:
            report["server"]["dense"] = bench_server(dense_dir, "dense", server_queries, args.server_requests)
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0
