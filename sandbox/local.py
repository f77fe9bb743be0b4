"""LocalSandbox: run untrusted Python on this machine, isolated by Linux namespaces and rlimits.

How: each worker is ``python _runner.py`` that unshares new user, PID, mount, network, IPC and
UTS namespaces, makes the whole filesystem read-only except a private tmpfs ``/tmp`` (the
host's ``/tmp``, ``/root``, ``/home``, ``/run`` are hidden), pre-imports numpy & co, then forks
one child per snippet. Children run as uid 65534 without capabilities, with rlimits on address
space, CPU time, processes, open files and file size, a scrubbed environment, a wall-clock kill
(every process of the worker's PID namespace) and output capped per stream. Sessions get a
dedicated worker whose child keeps its globals between runs. A dead or stuck worker is replaced
and the call returns an error ``ExecResult``; the host never hangs.

What it protects against: infinite loops, fork and memory bombs, huge output, killing the
worker, reading host secrets in the hidden dirs or the environment, network access, writing
outside the private temp dir. What it does NOT protect against: kernel exploits (this is not a
VM; use DockerSandbox/gVisor or a separate machine for hostile code at scale), reading
world-readable files outside the hidden dirs (e.g. ``/etc``, the repo), total memory of several
processes (each is capped, not their sum: up to ``max_procs`` x ``memory_mb``), CPU contention.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from agentrl.sandbox._runner import SAFE_ENV, read_frame, wait_readable, write_frame
from agentrl.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxSession

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_runner.py")
GRACE_S = 3.0  # the worker enforces timeouts itself; the host waits this much longer before giving up
STARTUP_TIMEOUT_S = 60.0


class WorkerDied(Exception):
    pass


class _Worker:
    """One zygote process, talked to over its stdin/stdout with length-prefixed JSON."""

    def __init__(self, argv: list[str]):
        self._log = tempfile.TemporaryFile()  # the worker's own stderr, shown if it fails to start
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=dict(SAFE_ENV), cwd="/", close_fds=True, start_new_session=True)
        self.ready = False

    def request(self, message: dict, timeout_s: float) -> dict:
        if not self.ready:
            self._expect_ready()
        try:
            write_frame(self.proc.stdin.fileno(), message)
        except OSError as e:
            raise WorkerDied(f"cannot write to the worker: {e}") from e
        reply = self._read(timeout_s)
        if "error" in reply:
            raise WorkerDied(reply["error"])
        return reply

    def _expect_ready(self) -> None:
        reply = self._read(STARTUP_TIMEOUT_S)
        if not reply.get("ready"):
            raise SandboxError(f"sandbox worker failed to start: {reply.get('error')}\n{self.log_tail()}")
        self.ready = True

    def _read(self, timeout_s: float) -> dict:
        fd = self.proc.stdout.fileno()
        if not wait_readable([fd], timeout_s):
            raise WorkerDied(f"no answer from the sandbox worker within {timeout_s:.1f}s")
        # The zygote writes each frame in one go, so once it starts arriving the rest follows.
        reply = read_frame(fd)
        if reply is None:
            raise WorkerDied(f"the sandbox worker exited (code {self.proc.poll()}) {self.log_tail()}".strip())
        return reply

    def log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace")

    def kill(self) -> None:
        # Killing the outer process kills PID 1 of the namespace (PDEATHSIG), hence all of it.
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._log):
            f.close()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class LocalSandbox(Sandbox):
    def __init__(self, workers: int = 2, max_output_bytes: int = 65536, max_procs: int = 16,
                 tmpfs_mb: int = 256, preload: tuple[str, ...] | None = None, spare_sessions: int = 1,
                 python: str = sys.executable, isolate: bool = True):
        if sys.platform != "linux":
            raise SandboxError("LocalSandbox needs Linux namespaces; use DockerSandbox or RemoteSandbox")
        self._argv = [os.path.realpath(python), RUNNER, f"--max-output={max_output_bytes}",
                      f"--max-procs={max_procs}", f"--tmpfs-mb={tmpfs_mb}"]
        if preload is not None:
            self._argv.append("--preload=" + ",".join(preload))
        if not isolate:
            self._argv.append("--no-isolate")
        self._init_pool(workers, spare_sessions)

    def _init_pool(self, workers: int, spare_sessions: int) -> None:
        self._all: list[_Worker] = []  # every live worker, for close() and the finalizer
        self._lock = threading.Lock()
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # LIFO: reuse the warm ones
        self._spares: list[_Worker] = []
        self._spare_target = spare_sessions
        self._closed = False
        for _ in range(workers):
            self._idle.put(self._start())
        self._refill_spares()
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    def _new_worker(self) -> _Worker:
        return _Worker(self._argv)

    def _start(self) -> _Worker:
        worker = self._new_worker()
        with self._lock:
            self._all.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _refill_spares(self) -> None:
        # Spare workers boot in the background (their own processes), so open_session is fast.
        with self._lock:
            missing = self._spare_target - len(self._spares)
        for _ in range(max(missing, 0)):
            worker = self._start()
            with self._lock:
                self._spares.append(worker)

    def run(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512) -> ExecResult:
        message = _message("run", code, timeout_s, memory_mb)
        if self._closed:
            raise SandboxError("the sandbox is closed")
        worker = self._idle.get()
        try:
            return ExecResult(**worker.request(message, timeout_s + GRACE_S))
        except WorkerDied as e:
            self._retire(worker)
            worker = self._start()
            return _worker_error(e)
        finally:
            self._idle.put(worker)

    def open_session(self, memory_mb: int = 512) -> "LocalSession":
        if self._closed:
            raise SandboxError("the sandbox is closed")
        with self._lock:
            worker = self._spares.pop() if self._spares else None
        self._refill_spares()
        return LocalSession(self, worker or self._start(), memory_mb)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
            self._spares.clear()
        _kill_all(workers)


class LocalSession(SandboxSession):
    """A dedicated worker whose child process keeps the globals between runs."""

    def __init__(self, sandbox: LocalSandbox, worker: _Worker, memory_mb: int):
        self._sandbox = sandbox
        self._worker = worker
        self._memory_mb = memory_mb
        self._lock = threading.Lock()

    def run(self, code: str, timeout_s: float = 5.0) -> ExecResult:
        message = _message("session_run", code, timeout_s, self._memory_mb)
        with self._lock:
            if self._worker is None:
                raise SandboxError("the session is closed")
            try:
                return ExecResult(**self._worker.request(message, timeout_s + GRACE_S))
            except WorkerDied as e:
                self._sandbox._retire(self._worker)
                self._worker = self._sandbox._start()
                return _worker_error(e, note="\n[the interpreter state was reset]")

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._sandbox._retire(self._worker)
                self._worker = None


def _message(op: str, code: str, timeout_s: float, memory_mb: int) -> dict:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    if not (0 < float(timeout_s) <= 3600):
        raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s}")
    if not (16 <= int(memory_mb) <= 1 << 20):
        raise ValueError(f"memory_mb must be in [16, 1048576], got {memory_mb}")
    return {"op": op, "code": code, "timeout_s": float(timeout_s), "memory_mb": int(memory_mb)}


def _worker_error(error: Exception, note: str = "") -> ExecResult:
    return ExecResult(stdout="", stderr=f"SandboxError: {error}; the worker was restarted{note}",
                      exit_code=-1, timed_out=False, oom=False, duration_s=0.0, truncated=False)
