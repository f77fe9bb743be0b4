"""Sandbox latency: ``agentrl bench sandbox`` (or ``python -m agentrl.sandbox.bench``).

Runs a trivial snippet and a numpy snippet through LocalSandbox (one-shot ``run`` and
``session.run``) and through the naive baseline, a fresh ``python -c`` subprocess per call,
side by side in one process; prints median / p99 latency, sequential calls/s and the
baseline-to-sandbox ratio of medians, and writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from agentrl.sandbox.local import LocalSandbox

SNIPPETS = {
    "print(1+1)": "print(1+1)",
    "numpy": "import numpy as np\na = np.arange(1000.0)\nprint(float((a * a).sum()))",
}


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


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="calls per sandbox backend and snippet")
    parser.add_argument("--baseline-n", type=int, default=None, help="calls for python -c (default: min(n, 50))")
    parser.add_argument("--workers", type=int, default=1, help="LocalSandbox workers (calls are sequential)")
    parser.add_argument("--out", default="bench_sandbox.json", help="where to write the JSON results")


def cli_main(args) -> int:
    baseline_n = args.baseline_n or min(args.n, 50)
    rows = run_bench(args.n, baseline_n, args.workers)
    print_table(rows)
    meta = {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "python": sys.version.split()[0]}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(_parser)
    raise SystemExit(cli_main(_parser.parse_args()))
