"""``agentrl bench sandbox --sessions N``: what a trainer's N per-episode sessions cost.

A trainer holds one env per episode of a step, each with a session sandbox of its own
(``agentrl.tools.session_sandbox``). This opens N of them the way the envs do, runs one numpy
snippet in each, and reports the seconds to get all N answering and the memory the sandbox
processes hold (summed PSS of this process's children: shared pages counted once), with the
workers forked from the fork server (``fork_server=True``, the default) and exec'ed one by one
(``fork_server=False``, the baseline), side by side in one run; then the ratios.
"""
from __future__ import annotations

import os
import time

from agentrl.bench.memory import pss_mb, tree_pids
from agentrl.sandbox.local import LocalSandbox

SNIPPET = "import numpy as np\nx = np.arange(10)\nprint(int(x.sum()))"


def measure(n: int, fork_server: bool) -> dict:
    start = time.perf_counter()
    sandboxes = [LocalSandbox(workers=0, light_workers=0, spare_sessions=0, fork_server=fork_server) for _ in range(n)]
    sessions = [sb.open_session() for sb in sandboxes]
    try:
        outputs = [s.run(SNIPPET).stdout.strip() for s in sessions]
        seconds = time.perf_counter() - start
        time.sleep(0.5)  # let the prepared children finish forking
        pids = tree_pids(os.getpid())[1:]
        memory = sum(pss_mb(p) for p in pids)
        second = time.perf_counter()
        for s in sessions:  # an episode ends and the next one starts on the recycled zygote
            s.close()
        sessions = [sb.open_session() for sb in sandboxes]
        again = [s.run(SNIPPET).stdout.strip() for s in sessions]
        reopen = time.perf_counter() - second
    finally:
        for s in sessions:
            s.close()
        for sb in sandboxes:
            sb.close()
    ok = all(o == "45" for o in outputs + again)
    return {"workers": "forked" if fork_server else "exec", "sessions": n, "start_s": seconds, "reopen_s": reopen,
            "processes": len(pids), "pss_mb": memory, "pss_mb_per_session": memory / n, "ok": ok}


def run(n: int) -> dict:
    rows = [measure(n, fork_server=False), measure(n, fork_server=True)]
    base, forked = rows
    return {"rows": rows, "ratios": {"start_s": forked["start_s"] / base["start_s"],
                                     "pss_mb": forked["pss_mb"] / base["pss_mb"]}}


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['rows'][0]['sessions']} session sandboxes, one numpy snippet each")
    for col in ("workers", "start s", "reopen s", "processes", "PSS MB", "PSS MB / session", "outputs ok"):
        table.add_column(col, justify="left" if col == "workers" else "right")
    for r in report["rows"]:
        table.add_row(r["workers"], f"{r['start_s']:.2f}", f"{r['reopen_s']:.2f}", str(r["processes"]),
                      f"{r['pss_mb']:.0f}", f"{r['pss_mb_per_session']:.1f}", str(r["ok"]))
    console = Console()
    console.print(table)
    x = report["ratios"]
    console.print(f"forked / exec: start {x['start_s']:.2f}x, memory {x['pss_mb']:.2f}x")
