"""Peak memory of a whole process tree, sampled from ``/proc`` while it runs.

A training run is more than one process: the sandbox's interpreter children, and with
``rollout.mode: async`` a rollout worker holding its own copy of the model. ``ru_maxrss`` of the
trainer sees none of them, and summing the RSS of processes that map the same libraries (every
one of them loads libtorch) counts those pages once per process. PSS (proportional set size)
splits every shared page between the processes that map it, so the PSS of a tree adds up to the
memory the tree really holds; this samples it every ``interval_s`` and keeps the peak.
"""
from __future__ import annotations

import threading
from pathlib import Path


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (Linux ``/proc/<pid>/task/<tid>/children``)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:  # the task or process exited meanwhile
                continue
    return out


def pss_mb(pid: int) -> float:
    """Proportional set size of one process in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError):
        pass
    return 0.0


class TreeMemory:
    """``with TreeMemory(pid) as mem: ...`` then ``mem.peak_mb`` (sum of PSS over the tree) and
    ``mem.peak_processes`` (how many processes the tree had at that peak)."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb, self.peak_processes, self.samples = 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentrl-tree-memory", daemon=True)

    def sample(self) -> float:
        pids = tree_pids(self.pid)
        total = sum(pss_mb(p) for p in pids)
        self.samples += 1
        if total > self.peak_mb:
            self.peak_mb, self.peak_processes = total, len(pids)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
