"""Sandbox latency: ``agentrl bench sandbox`` (or ``python -m agentrl.sandbox.bench``).

Default: runs a trivial snippet and a numpy snippet through LocalSandbox (one-shot ``run`` and
``session.run``) and through the naive baseline, a fresh ``python -c`` subprocess per call,
side by side in one process; prints median / p99 latency, sequential calls/s and the
baseline-to-sandbox ratio of medians, and writes the numbers as JSON.

``--server``: the server under load. Starts the real ``agentrl serve sandbox`` and a naive
server (same FastAPI + uvicorn, but ``python -c`` per request) as subprocesses on loopback
ports, then drives each with 1, 8, 32 and 64 concurrent keep-alive clients (``--clients``),
trivial and numpy snippets, each cell bounded by ``--requests`` calls and ``--seconds`` of
wall time. Reports calls/s, p50 / p99 latency of completed calls, errors (a failed call, a
wrong output, a transport error or a client timeout) and 429s (retried after Retry-After, as
RemoteSandbox does), calls/s relative to the naive server, and the CPU time per call of the
server's whole process tree plus the load generator, with the calls/s it bounds on an
otherwise idle machine (CPUs / CPU per call): on a shared machine calls/s follows the other
tenants' load, CPU per call much less. The load generator is a small
asyncio HTTP/1.1 client (``--client raw``), not httpx, which on a 2-core machine costs the
server a good share of its CPU (``--client httpx`` to see how much).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Optional

from pydantic import BaseModel, ConfigDict

from agentrl.sandbox.local import LocalSandbox

SNIPPETS = {
    "print(1+1)": "print(1+1)",
    "numpy": "import numpy as np\na = np.arange(1000.0)\nprint(float((a * a).sum()))",
}
EXPECTED = {"print(1+1)": "2\n", "numpy": "332833500.0\n"}


def _measure(call, n: int) -> dict:
    call()  # warm-up, not counted
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    latencies.sort()
    return {"n": n, "median_ms": statistics.median(latencies) * 1e3,
            "p99_ms": latencies[min(n - 1, int(0.99 * n))] * 1e3, "calls_per_s": n / total}


def _checked(result, expected_ok: bool = True):
    if expected_ok and result.exit_code != 0:
        raise RuntimeError(f"benchmark snippet failed in the sandbox: {result.stderr}")
    return result


def run_bench(n: int, baseline_n: int, workers: int) -> list[dict]:
    python = os.path.realpath(sys.executable)
    rows = []
    with LocalSandbox(workers=workers) as sandbox:
        session = sandbox.open_session()
        for name, code in SNIPPETS.items():
            backends = {
                "LocalSandbox.run": (lambda: _checked(sandbox.run(code)), n),
                "LocalSandbox session.run": (lambda: _checked(session.run(code)), n),
                "python -c (baseline)": (lambda: subprocess.run([python, "-c", code], capture_output=True, check=True),
                                         baseline_n),
            }
            stats = {label: _measure(call, count) for label, (call, count) in backends.items()}
            base = stats["python -c (baseline)"]["median_ms"]
            for label, s in stats.items():
                rows.append({"snippet": name, "backend": label, **s, "speedup_vs_baseline": base / s["median_ms"]})
        session.close()
    return rows


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # a sandbox-only machine may not have rich
        for r in rows:
            print(r)
        return
    table = Table(title=f"sandbox latency ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    for col in ("snippet", "backend", "n", "median ms", "p99 ms", "calls/s", "speedup vs python -c"):
        table.add_column(col, justify="left" if col in ("snippet", "backend") else "right")
    for r in rows:
        table.add_row(r["snippet"], r["backend"], str(r["n"]), f"{r['median_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['calls_per_s']:.0f}", f"{r['speedup_vs_baseline']:.1f}")
    Console(width=120).print(table)



# ---------------------------------------------------------------- --server: the server under load
def naive_app():
    """The baseline server: same framework, but a fresh ``python -c`` subprocess per request."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    python = os.path.realpath(sys.executable)
    app = FastAPI(title="naive python -c server")

    @app.post("/run")
    def run(req: _NaiveRequest):  # a plain def: FastAPI's thread pool runs up to 40 at once
        start = time.perf_counter()
        try:
            p = subprocess.run([python, "-c", req.code], input=req.stdin or "", capture_output=True, text=True,
                               timeout=req.timeout_s)
            out = {"stdout": p.stdout, "stderr": p.stderr, "exit_code": p.returncode, "timed_out": False}
        except subprocess.TimeoutExpired as e:
            out = {"stdout": "", "stderr": str(e), "exit_code": -9, "timed_out": True}
        out["duration_s"] = time.perf_counter() - start
        return Response(json.dumps(out), media_type="application/json")

    return app


class _NaiveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    timeout_s: float = 5.0
    memory_mb: int = 512
    stdin: Optional[str] = None


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process below it, the reaped ones included
    (Linux /proc; 0.0 elsewhere)."""
    parents, times = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0.0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return sum(times.get(p, 0.0) for p in tree)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(argv: list[str], port: int, startup_s: float = 120.0):
    """A server subprocess, up once its port answers /docs; killed on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {argv} exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {argv} did not listen on {port} within {startup_s:.0f}s")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


class _Cell:
    """One (clients, snippet, backend) measurement: shared request budget and deadline."""

    def __init__(self, requests: int, seconds: float):
        self.left = requests
        self.deadline = time.perf_counter() + seconds
        self.latencies: list[float] = []
        self.errors = 0
        self.rejected = 0
        self.error_examples: list[str] = []

    def take(self) -> bool:
        if self.left <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.left -= 1
        return True

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(what[:300])


async def _raw_client(port: int, body: bytes, expected: str, cell: _Cell, timeout_s: float) -> None:
    """Keep-alive HTTP/1.1 over one connection: write the request, read status, headers, body."""
    head = (f"POST /run HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    reader = writer = None

    async def one() -> tuple[int, dict, bytes]:
        writer.write(request)
        status = int((await reader.readline()).split(b" ", 2)[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))

    try:
        while cell.take():
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            try:
                status, headers, data = await asyncio.wait_for(one(), timeout_s)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                cell.error(f"{type(e).__name__}: {e}")
                writer.close()
                reader = writer = None
                continue
            elapsed = time.perf_counter() - t0
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
            if status == 429:
                cell.rejected += 1
                cell.left += 1  # refused unrun: the call is retried, not lost
                await asyncio.sleep(float(headers.get("retry-after", 1)))
                continue
            _record(cell, status, data, expected, elapsed)
    finally:
        if writer is not None:
            writer.close()


async def _httpx_client(client, body: bytes, expected: str, cell: _Cell, timeout_s: float) -> None:
    import httpx

    while cell.take():
        t0 = time.perf_counter()
        try:
            r = await client.post("/run", content=body, headers={"content-type": "application/json"}, timeout=timeout_s)
        except httpx.HTTPError as e:
            cell.error(f"{type(e).__name__}: {e}")
            continue
        if r.status_code == 429:
            cell.rejected += 1
            cell.left += 1
            await asyncio.sleep(float(r.headers.get("retry-after", 1)))
            continue
        _record(cell, r.status_code, r.content, expected, time.perf_counter() - t0)


def _record(cell: _Cell, status: int, data: bytes, expected: str, elapsed: float) -> None:
    if status != 200:
        cell.error(f"HTTP {status}: {data[:200]!r}")
        return
    result = json.loads(data)
    if result.get("exit_code") != 0 or result.get("stdout") != expected:
        cell.error(f"wrong result: {result}")
        return
    cell.latencies.append(elapsed)


async def _drive(url: str, clients: int, code: str, expected: str, requests: int, seconds: float,
                 timeout_s: float, client_kind: str) -> dict:
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"code": code, "timeout_s": 10.0}).encode()
    warm = _Cell(2 * clients, 30.0)  # open the connections and warm the workers, not counted
    cell = _Cell(requests, seconds)
    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, limits=limits) as client:
            await asyncio.gather(*(_httpx_client(client, body, expected, warm, timeout_s) for _ in range(clients)))
            start = time.perf_counter()
            cell.deadline = start + seconds
            await asyncio.gather(*(_httpx_client(client, body, expected, cell, timeout_s) for _ in range(clients)))
    else:
        await asyncio.gather(*(_raw_client(port, body, expected, warm, timeout_s) for _ in range(clients)))
        start = time.perf_counter()
        cell.deadline = start + seconds
        await asyncio.gather(*(_raw_client(port, body, expected, cell, timeout_s) for _ in range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(cell.latencies)
    n = len(lat)
    pct = (lambda q: lat[min(n - 1, int(q * n))] * 1e3) if n else (lambda q: float("nan"))
    return {"calls": n, "wall_s": wall, "calls_per_s": n / wall if wall else 0.0, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "errors": cell.errors + warm.errors, "429s": cell.rejected + warm.rejected,
            "warm_calls": len(warm.latencies),
            "error_examples": cell.error_examples + warm.error_examples}


def run_server_bench(clients: list[int], requests: int, seconds: float, workers: int | None, max_queue: int,
                     timeout_s: float = 60.0, client_kind: str = "raw", snippets: list[str] | None = None,
                     naive: bool = True) -> dict:
    python = sys.executable
    sized = ["--workers", str(workers)] if workers else []
    backends = {
        "agentrl serve sandbox": lambda port: [python, "-m", "agentrl.sandbox.server", "--port", str(port), *sized,
                                               "--max-queue", str(max_queue), "--spare-sessions", "0"],
        "naive python -c server": lambda port: [python, "-m", "agentrl.sandbox.bench", "--serve-naive", str(port)],
    }
    if not naive:
        backends.pop("naive python -c server")
    rows = []
    slots = None
    load_before = os.getloadavg()[0]
    for backend, argv in backends.items():
        port = _free_port()
        with _server(argv(port), port) as (url, pid):
            if backend.startswith("agentrl"):
                import httpx

                slots = httpx.get(url + "/health", timeout=30).json()["runs"]["slots"]
            for n_clients in clients:
                for name in snippets or list(SNIPPETS):
                    cpu0 = _tree_cpu_s(pid), time.process_time()
                    stats = asyncio.run(_drive(url, n_clients, SNIPPETS[name], EXPECTED[name], requests, seconds,
                                               timeout_s, client_kind))
                    # CPU per call of the server's process tree and of this client: unlike calls/s, about
                    # the same on a busy machine, and it bounds calls/s on an idle one (CPUs / CPU per call).
                    # Warm-up calls included: the counters cannot tell them apart.
                    calls = stats["calls"] + stats.pop("warm_calls")
                    server_cpu, client_cpu = _tree_cpu_s(pid) - cpu0[0], time.process_time() - cpu0[1]
                    stats["server_cpu_ms_per_call"] = 1e3 * server_cpu / calls if calls else float("nan")
                    stats["client_cpu_ms_per_call"] = 1e3 * client_cpu / calls if calls else float("nan")
                    stats["cpu_bound_calls_per_s"] = (os.cpu_count() or 1) * calls / (server_cpu + client_cpu) \
                        if server_cpu + client_cpu > 0 else float("nan")
                    rows.append({"clients": n_clients, "snippet": name, "backend": backend, **stats})
                    print(f"  {backend:<24} {n_clients:>3} clients  {name:<10} {stats['calls_per_s']:7.1f} calls/s  "
                          f"p50 {stats['p50_ms']:7.1f} ms  p99 {stats['p99_ms']:7.1f} ms  errors {stats['errors']}  "
                          f"429s {stats['429s']}", flush=True)
    naive_rate = {(r["clients"], r["snippet"]): r["calls_per_s"] for r in rows if r["backend"].startswith("naive")}
    for r in rows:
        base = naive_rate.get((r["clients"], r["snippet"]))
        r["x_naive"] = r["calls_per_s"] / base if base else float("nan")
    order = list(SNIPPETS)
    rows.sort(key=lambda r: (r["clients"], order.index(r["snippet"]), r["backend"]))
    meta = {"cpus": os.cpu_count(), "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
            "python": sys.version.split()[0], "server_workers": slots, "max_queue": max_queue,
            "uvloop_httptools": _have("uvloop") and _have("httptools"),
            "requests_per_cell": requests, "seconds_per_cell": seconds, "client": client_kind}
    return {"meta": meta, "results": rows}


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def print_server_table(report: dict) -> None:
    rows, meta = report["results"], report["meta"]
    cols = ("clients", "snippet", "backend", "calls/s", "p50 ms", "p99 ms", "errors", "429s", "x naive",
            "CPU ms/call", "CPU-bound calls/s")
    cells = [[str(r["clients"]), r["snippet"], r["backend"], f"{r['calls_per_s']:.1f}", f"{r['p50_ms']:.1f}",
              f"{r['p99_ms']:.1f}", str(r["errors"]), str(r["429s"]), f"{r['x_naive']:.1f}",
              f"{r['server_cpu_ms_per_call'] + r['client_cpu_ms_per_call']:.2f}", f"{r['cpu_bound_calls_per_s']:.0f}"]
             for r in rows]
    title = (f"sandbox server under load ({meta['cpus']} CPUs, load {meta['loadavg_1m_before']:.1f} -> "
             f"{meta['loadavg_1m_after']:.1f}, {meta['server_workers']} sandbox workers (full + light), max queue "
             f"{meta['max_queue']}, <= {meta['requests_per_cell']} calls or {meta['seconds_per_cell']:.0f}s per cell, "
             f"uvloop+httptools: {'yes' if meta['uvloop_httptools'] else 'no'})")
    # A markdown table: it goes into notes and issues as is. CPU ms/call: server process tree
    # (sandbox workers included) + this load generator; CPU-bound calls/s = CPUs / that, the
    # most an otherwise idle machine could do.
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(title)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if i > 2 else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for row in cells:
        padded = (v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
        print("| " + " | ".join(padded) + " |")
    for r in rows:
        if r["error_examples"]:
            print(f"errors, {r['backend']} {r['clients']} clients {r['snippet']}: {r['error_examples'][0][:240]}")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="calls per sandbox backend and snippet")
    parser.add_argument("--baseline-n", type=int, default=None, help="calls for python -c (default: min(n, 50))")
    parser.add_argument("--workers", type=int, default=None,
                        help="LocalSandbox workers (default 1: calls are sequential; --server: the server's default)")
    parser.add_argument("--out", default=None, help="where to write the JSON results "
                        "(default bench_sandbox.json, --server: bench_sandbox_server.json)")
    server = parser.add_argument_group("--server: the HTTP server under concurrent load")
    server.add_argument("--server", action="store_true", help="benchmark agentrl serve sandbox against a naive server")
    server.add_argument("--clients", default="1,8,32,64", help="concurrent clients, comma-separated")
    server.add_argument("--requests", type=int, default=2000, help="calls per cell at most")
    server.add_argument("--seconds", type=float, default=8.0, help="wall seconds per cell at most")
    server.add_argument("--max-queue", type=int, default=128, help="the server's --max-queue")
    server.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator's HTTP client")
    server.add_argument("--snippets", default=",".join(SNIPPETS), help="which snippets, comma-separated")
    server.add_argument("--no-naive", action="store_true", help="skip the naive server (quick runs)")
    parser.add_argument("--sessions", type=int, default=None, metavar="N",
                        help="instead: N per-episode session sandboxes, workers forked (fork server) vs exec'ed: "
                             "start seconds and memory (sandbox/bench_sessions.py)")
    parser.add_argument("--serve-naive", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)


def cli_main(args) -> int:
    if args.serve_naive is not None:
        import uvicorn

        uvicorn.run(naive_app(), host="127.0.0.1", port=args.serve_naive, log_level="warning", access_log=False)
        return 0
    if args.sessions:
        from agentrl.sandbox import bench_sessions

        report = bench_sessions.run(args.sessions)
        bench_sessions.print_table(report)
        out = args.out or "bench_sandbox_sessions.json"
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {out}")
        return 0
    if args.server:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
        report = run_server_bench(clients, args.requests, args.seconds, args.workers, args.max_queue,
                                  client_kind=args.client, snippets=[s for s in args.snippets.split(",") if s],
                                  naive=not args.no_naive)
        print_server_table(report)
        out = args.out or "bench_sandbox_server.json"
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {out}")
        return 0
    baseline_n = args.baseline_n or min(args.n, 50)
    rows = run_bench(args.n, baseline_n, args.workers or 1)
    print_table(rows)
    meta = {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "python": sys.version.split()[0]}
    out = args.out or "bench_sandbox.json"
    with open(out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(_parser)
    raise SystemExit(cli_main(_parser.parse_args()))
