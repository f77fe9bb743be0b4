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

import asyncio
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import logging

from agentrl.sandbox import forkserver
from agentrl.sandbox._runner import _HEADER, DEFAULT_PRELOAD, SAFE_ENV, read_frame, wait_readable, write_frame
from agentrl.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxSession

log = logging.getLogger("agentrl.sandbox")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_runner.py")
MAX_STDIN_BYTES = 16 << 20  # below the children's RLIMIT_FSIZE (64 MiB), which the stdin memfd counts against
SMALL_FRAME = 16384  # requests up to this size are written from the event loop (a pipe holds 64 KiB)
GRACE_S = 3.0  # the worker enforces timeouts itself; the host waits this much longer before giving up
STARTUP_TIMEOUT_S = 60.0


STDLIB = frozenset(sys.stdlib_module_names)
_IMPORTS = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|import[ \t]+([\w., \t]+))", re.M)
_NOT_LIGHT = re.compile(r"\b(?:numpy|np|__import__|importlib)\b")


def stdlib_only(code: str) -> bool:
    """Whether ``code`` looks like it imports nothing outside the standard library (a guess
    that picks the worker kind; it decides speed only, never what the code can do)."""
    if _NOT_LIGHT.search(code):
        return False
    for m in _IMPORTS.finditer(code):
        names = [m.group(1)] if m.group(1) else [n.split()[0] for n in m.group(2).split(",") if n.strip()]
        if any(name.split(".")[0] not in STDLIB for name in names):
            return False
    return True


class WorkerDied(Exception):
    pass


class _Worker:
    """One zygote process, talked to over its stdin/stdout with length-prefixed JSON: forked from
    the process's fork server (``forkserver.py``) or, with ``forked=False``, exec'ed."""

    def __init__(self, argv: list[str], forked: bool = False):
        self._log = tempfile.TemporaryFile()  # the worker's own stderr, shown if it fails to start
        self.proc = None
        if forked:
            preload = next(a for a in argv if a.startswith("--preload="))
            try:
                self.proc = forkserver.spawn(argv[0], argv[2:], preload, self._log.fileno())
            except forkserver.ForkServerError as e:  # e.g. a python without socket.send_fds: exec instead
                log.warning("sandbox fork server unavailable (%s); starting the worker with exec", e)
        if self.proc is None:
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

    async def arequest(self, message: dict, timeout_s: float) -> dict:
        """``request`` for asyncio callers: waits for the reply in the event loop, no thread."""
        loop = asyncio.get_running_loop()
        if not self.ready:
            await loop.run_in_executor(None, self._expect_ready)
        data = json.dumps(message).encode()
        frame = _HEADER.pack(len(data)) + data
        fd = self.proc.stdin.fileno()
        try:
            if len(frame) <= SMALL_FRAME:  # fits the empty pipe: the write cannot block
                while frame:
                    frame = frame[os.write(fd, frame):]
            else:
                await loop.run_in_executor(None, _write_all, fd, frame)
        except OSError as e:
            raise WorkerDied(f"cannot write to the worker: {e}") from e
        out = self.proc.stdout.fileno()
        readable = loop.create_future()
        loop.add_reader(out, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout_s)
        except asyncio.TimeoutError:
            raise WorkerDied(f"no answer from the sandbox worker within {timeout_s:.1f}s") from None
        finally:
            loop.remove_reader(out)
        reply = self._read(0)  # readable now; the zygote writes a frame in one go, the rest follows
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
            code = self.proc.poll()
            how = "exited" if code in (None, -1) else f"exited (code {code})"  # -1: forked, code unknown
            raise WorkerDied(f"the sandbox worker {how} {self.log_tail()}".strip())
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


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


async def _arequest(worker, message: dict, timeout_s: float) -> dict:
    """A request to any worker kind from asyncio: in the loop if it can, else in a thread."""
    arequest = getattr(worker, "arequest", None)
    if arequest is None:  # e.g. a Docker worker
        return await asyncio.to_thread(worker.request, message, timeout_s)
    return await arequest(message, timeout_s)


def _kill_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class LocalSandbox(Sandbox):
    """``workers`` pre-started workers for one-shot runs, with ``preload`` imported; and
    ``light_workers`` (default: as many) with only its standard-library part, for one-shot code
    whose imports are all standard library: forking the smaller interpreter costs about half
    (numpy doubles the memory that each fork copies and each exit frees). Code that names
    numpy, ``__import__`` or importlib, or imports anything else, goes to the full workers; a
    wrong guess only costs time (the import), never a result. Sessions always get full workers.

    ``fork_server`` (default on): workers are forks of one interpreter per host process that has
    the preload imported (``forkserver.py``): every sandbox of the process shares those pages,
    and a worker starts in milliseconds; isolation is the same. Off: each worker exec's Python.
    ``prepared_children``: children each worker forks ahead of the next request (2 keeps
    back-to-back one-shot runs from waiting on a fork; a session-only sandbox needs 1)."""

    recycle_sessions = True
    """A closed session's zygote serves the next session (see ``LocalSession.close``)."""

    def __init__(self, workers: int = 2, max_output_bytes: int = 65536, max_procs: int = 16,
                 tmpfs_mb: int = 256, preload: tuple[str, ...] | None = None, spare_sessions: int = 1,
                 python: str = sys.executable, isolate: bool = True, light_workers: int | None = None,
                 fork_server: bool = True, prepared_children: int = 2):
        if sys.platform != "linux":
            raise SandboxError("LocalSandbox needs Linux namespaces; use DockerSandbox or RemoteSandbox")
        self._argv = [os.path.realpath(python), RUNNER, f"--max-output={max_output_bytes}",
                      f"--max-procs={max_procs}", f"--tmpfs-mb={tmpfs_mb}",
                      f"--prepared={prepared_children}"]
        if not isolate:
            self._argv.append("--no-isolate")
        self._forked = fork_server
        preload = DEFAULT_PRELOAD if preload is None else tuple(preload)
        light = tuple(m for m in preload if m.split(".")[0] in STDLIB)
        self._light_argv = self._argv + ["--preload=" + ",".join(light)]
        self._argv.append("--preload=" + ",".join(preload))
        if light_workers is None:
            light_workers = workers if light != preload else 0  # nothing to gain if the preload is all stdlib
        self._init_pool(workers, spare_sessions, light_workers)

    def _init_pool(self, workers: int, spare_sessions: int, light_workers: int = 0) -> None:
        self.full_workers, self.light_workers = workers, light_workers
        self.workers = workers + light_workers  # how many one-shot runs execute at once
        self._all: list[_Worker] = []  # every live worker, for close() and the finalizer
        self._lock = threading.Lock()
        # FIFO, not LIFO: a worker handed back has just replied and is still killing the child
        # and forking the next one; the one idle longest is ready now.
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._idle_light: queue.Queue[_Worker] = queue.Queue()
        self._spares: list[_Worker] = []
        self._spare_target = spare_sessions
        self._closed = False
        for _ in range(workers):
            self._idle.put(self._start())
        for _ in range(light_workers):
            self._idle_light.put(self._start(light=True))
        self._has_light = light_workers > 0
        self._refill_spares()
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    def _new_worker(self) -> _Worker:
        return _Worker(self._argv, self._forked)

    def _new_light_worker(self) -> _Worker:
        return _Worker(self._light_argv, self._forked)

    def _start(self, light: bool = False) -> _Worker:
        worker = self._new_light_worker() if light else self._new_worker()
        worker.light = light
        with self._lock:
            self._all.append(worker)
        return worker

    def uses_light_worker(self, code: str) -> bool:
        """Whether a one-shot run of ``code`` goes to a light worker (see the class doc)."""
        return self._has_light and stdlib_only(code)

    def _pool(self, code: str) -> queue.Queue:
        return self._idle_light if self.uses_light_worker(code) else self._idle

    def _replace(self, worker: _Worker) -> _Worker:
        self._retire(worker)
        return self._start(light=getattr(worker, "light", False))

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def _recycle(self, worker: _Worker) -> None:
        """A closed session's zygote: kept as a spare up to ``spare_sessions + 1`` idle (the
        spares plus the one an env re-opens right after closing), else retired. A trainer's env
        sandboxes (``agentrl.tools.session_sandbox``) keep no spare: one idle zygote, which the
        env's next episode takes."""
        with self._lock:
            keep = not self._closed and worker in self._all and len(self._spares) <= self._spare_target
            if keep:
                self._spares.append(worker)
        if not keep:
            self._retire(worker)

    def _refill_spares(self) -> None:
        # Spare workers boot in the background (their own processes), so open_session is fast.
        with self._lock:
            missing = self._spare_target - len(self._spares)
        for _ in range(max(missing, 0)):
            worker = self._start()
            with self._lock:
                self._spares.append(worker)

    def run(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512, stdin: str | None = None) -> ExecResult:
        message = _message("run", code, timeout_s, memory_mb, stdin)
        if self._closed:
            raise SandboxError("the sandbox is closed")
        pool = self._pool(code)
        worker = pool.get()
        try:
            return ExecResult(**worker.request(message, timeout_s + GRACE_S))
        except WorkerDied as e:
            worker = self._replace(worker)
            return _worker_error(e)
        finally:
            pool.put(worker)

    async def arun(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512,
                   stdin: str | None = None) -> ExecResult:
        """``run`` for asyncio callers (the HTTP server): no thread while the code runs."""
        message = _message("run", code, timeout_s, memory_mb, stdin)
        if self._closed:
            raise SandboxError("the sandbox is closed")
        pool = self._pool(code)
        try:
            worker = pool.get_nowait()
        except queue.Empty:
            worker = await asyncio.to_thread(pool.get)
        finished = False
        try:
            result = ExecResult(**await _arequest(worker, message, timeout_s + GRACE_S))
            finished = True
            return result
        except WorkerDied as e:
            worker = self._replace(worker)
            finished = True
            return _worker_error(e)
        finally:
            if not finished:  # cancelled or failed mid-request: its late reply must not reach the next caller
                worker = self._replace(worker)
            pool.put(worker)

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

    def run(self, code: str, timeout_s: float = 5.0, stdin: str | None = None) -> ExecResult:
        message = _message("session_run", code, timeout_s, self._memory_mb, stdin)
        with self._lock:
            if self._worker is None:
                raise SandboxError("the session is closed")
            try:
                return ExecResult(**self._worker.request(message, timeout_s + GRACE_S))
            except WorkerDied as e:
                self._sandbox._retire(self._worker)
                self._worker = self._sandbox._start()
                return _worker_error(e, note="\n[the interpreter state was reset]")

    async def arun(self, code: str, timeout_s: float = 5.0, stdin: str | None = None) -> ExecResult:
        """``run`` for asyncio callers: no thread while the code runs (one run at a time per session)."""
        message = _message("session_run", code, timeout_s, self._memory_mb, stdin)
        if not self._lock.acquire(blocking=False):  # another run of this session is under way: wait in a thread
            return await asyncio.to_thread(self.run, code, timeout_s, stdin)
        try:
            if self._worker is None:
                raise SandboxError("the session is closed")
            finished = False
            try:
                result = ExecResult(**await _arequest(self._worker, message, timeout_s + GRACE_S))
                finished = True
                return result
            except WorkerDied as e:
                finished = True
                self._sandbox._retire(self._worker)
                self._worker = self._sandbox._start()
                return _worker_error(e, note="\n[the interpreter state was reset]")
            finally:
                if not finished:  # cancelled mid-request: the worker's state is unknown, start over
                    self._sandbox._retire(self._worker)
                    self._worker = self._sandbox._start()
        finally:
            self._lock.release()

    def close(self) -> None:
        """End the session: its child and every process it started are killed, and the zygote goes
        back to the sandbox's spares for the next session (a fresh child, fresh globals, a fresh
        working directory: the isolation one-shot runs get between snippets), saving the start of a
        new interpreter and its imports per episode. A zygote that does not answer is retired."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is None:
            return
        if not self._sandbox.recycle_sessions:
            self._sandbox._retire(worker)
            return
        try:
            worker.request({"op": "session_end"}, GRACE_S)
        except (WorkerDied, SandboxError, OSError):
            self._sandbox._retire(worker)
            return
        self._sandbox._recycle(worker)


def _message(op: str, code: str, timeout_s: float, memory_mb: int, stdin: str | None = None) -> dict:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    if stdin is not None and not isinstance(stdin, str):
        raise TypeError(f"stdin must be a str or None, not {type(stdin).__name__}")
    if stdin is not None and len(stdin) > MAX_STDIN_BYTES // 4 \
            and len(stdin.encode("utf-8", "surrogatepass")) > MAX_STDIN_BYTES:
        raise ValueError(f"stdin is larger than {MAX_STDIN_BYTES >> 20} MiB")
    if not (0 < float(timeout_s) <= 3600):
        raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s}")
    if not (16 <= int(memory_mb) <= 1 << 20):
        raise ValueError(f"memory_mb must be in [16, 1048576], got {memory_mb}")
    return {"op": op, "code": code, "timeout_s": float(timeout_s), "memory_mb": int(memory_mb), "stdin": stdin}


def _worker_error(error: Exception, note: str = "") -> ExecResult:
    return ExecResult(stdout="", stderr=f"SandboxError: {error}; the worker was restarted{note}",
                      exit_code=-1, timed_out=False, oom=False, duration_s=0.0, truncated=False, sandbox_error=True)
