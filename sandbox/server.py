"""HTTP front of a LocalSandbox: ``agentrl serve sandbox --host 127.0.0.1 --port 8001 --workers N``.

agentrl's endpoints (JSON): ``POST /run {code, timeout_s, memory_mb, stdin}`` -> ExecResult;
``POST /sessions {memory_mb}`` -> ``{id}``; ``POST /sessions/{id}/run {code, timeout_s, stdin}``;
``DELETE /sessions/{id}``; ``GET /health``. A field these endpoints do not know, or a value of
the wrong type (``"5"`` for a number included), gets HTTP 422 naming it; unknown or expired
sessions 404. Sessions idle longer than ``--session-idle-s`` are closed by a sweeper.

SandboxFusion's API, for verl's ``SandboxFusionTool`` / sandbox_fusion reward and ReTool's
recipe: ``POST /run_code {code, language, run_timeout, compile_timeout, memory_limit_MB, stdin,
files, fetch_files}`` -> ``{status: Success | Failed | SandboxError, message, compile_result,
run_result: {status: Finished | TimeLimitExceeded | Error, execution_time, return_code, stdout,
stderr}, executor_pod_name, files}``, and ``GET /v1/ping``. Only ``language: "python"`` runs; any
other language answers ``SandboxError`` with a message and runs nothing. ``memory_limit_MB`` is
the run's memory on top of the pre-imported interpreter (-1: ``--default-memory-mb``);
``compile_timeout`` is accepted and unused (Python has no compile step), as in SandboxFusion.
Non-empty ``files`` / ``fetch_files`` are not supported: ``SandboxError``, nothing runs.

Under load: one-shot runs (``/run`` and ``/run_code``) execute one per sandbox worker
(``--workers``, 2 per CPU by default, plus as many ``--light-workers`` for standard-library-only
code, see ``LocalSandbox``); up to ``--max-queue`` more wait (FIFO); past that a request is
answered at once with HTTP 429 and ``Retry-After`` (whole seconds, from the measured run time;
the body's ``retry_after_s`` has the unrounded estimate) instead of waiting into the client's
read timeout. ``RemoteSandbox`` retries 429s with jittered backoff. Note verl's client retries
only 504: size ``--max-queue`` above verl's concurrency (``sandbox_fusion.max_concurrent``, 64
by default) so that it never sees a 429. uvicorn uses uvloop and httptools when installed
(``pip install uvloop httptools``): about 0.2 ms less CPU per call.

Isolation is LocalSandbox's (see ``local.py``); the server adds no authentication: bind it to
loopback or a private network. Use one server process (``--workers`` sets sandbox workers,
not HTTP processes) because sessions live in this process's memory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import threading
import time
import uuid
from typing import Optional

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentrl.sandbox.base import ExecResult, SandboxError
from agentrl.sandbox.local import MAX_STDIN_BYTES, LocalSandbox

MAX_CODE_CHARS = 1_000_000
MAX_STDIN_CHARS = MAX_STDIN_BYTES // 4  # a char is at most 4 UTF-8 bytes: always under the sandbox's cap
SANDBOXFUSION_LANGUAGES = (
    "python", "cpp", "nodejs", "go", "go_test", "java", "php", "csharp", "bash", "typescript", "sql", "rust", "cuda",
    "lua", "R", "perl", "D_ut", "ruby", "scala", "julia", "pytest", "junit", "kotlin_script", "jest", "verilog",
    "python_gpu", "lean", "swift", "racket")


# ---------------------------------------------------------------- request models
class _Strict(BaseModel):
    """agentrl's own requests: unknown fields and coercible-but-wrong types are errors (422)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RunRequest(_Strict):
    code: str = Field(max_length=MAX_CODE_CHARS)
    timeout_s: float = Field(5.0, gt=0, le=600)
    memory_mb: int = Field(512, ge=16, le=65536)
    stdin: Optional[str] = Field(None, max_length=MAX_STDIN_CHARS)


class SessionRequest(_Strict):
    memory_mb: int = Field(512, ge=16, le=65536)


class SessionRunRequest(_Strict):
    code: str = Field(max_length=MAX_CODE_CHARS)
    timeout_s: float = Field(5.0, gt=0, le=600)
    stdin: Optional[str] = Field(None, max_length=MAX_STDIN_CHARS)


class RunCodeRequest(BaseModel):
    """SandboxFusion's ``RunCodeRequest`` (sandbox/server/sandbox_api.py), with its defaults; lax
    types like SandboxFusion's (verl sends integer timeouts), but unknown fields are a 422 here."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(max_length=MAX_CODE_CHARS)
    language: str = "python"  # required by SandboxFusion; verl always sends it
    compile_timeout: float = Field(10, ge=0)
    run_timeout: float = Field(10, gt=0, le=3600)
    memory_limit_MB: int = -1
    stdin: Optional[str] = Field(None, max_length=MAX_STDIN_CHARS)
    files: dict[str, Optional[str]] = {}
    fetch_files: list[str] = []

    @field_validator("memory_limit_MB")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value <= 0:
            return -1  # SandboxFusion: no limit; here the server's --default-memory-mb
        if not 16 <= value <= 65536:
            raise ValueError("memory_limit_MB must be -1 (server default) or in [16, 65536]")
        return value


# ---------------------------------------------------------------- load control
class Busy(Exception):
    def __init__(self, what: str, retry_after_s: float):
        super().__init__(what)
        self.retry_after_s = retry_after_s


class Admission:
    """Calls of each kind run at most ``slots[kind]`` at once (one per worker of that kind) and
    wait for a slot in FIFO order; once ``max_queue`` calls wait in all, the next gets ``Busy``
    at once. Lives on the event loop: the counters need no lock."""

    def __init__(self, name: str, slots: dict[str, int], max_queue: int):
        self.name, self.max_queue = name, max_queue
        self.limiters = {kind: anyio.CapacityLimiter(n) for kind, n in slots.items() if n > 0}
        self.slots = sum(slots.values())
        self.inflight = 0  # running + waiting
        self.rejected = 0
        self.service_s = 0.01  # moving average of one call's run time, for Retry-After

    async def call(self, kind: str, fn, *args):
        """``await fn(*args)`` once a slot of ``kind`` is free; ``Busy`` at once if the queue is full."""
        if self.inflight >= self.slots + self.max_queue:
            self.rejected += 1
            waiting = self.inflight - self.slots + 1
            raise Busy(f"{self.name}: {self.slots} running and {self.max_queue} queued (the limit)",
                       retry_after_s=waiting * self.service_s / self.slots)
        self.inflight += 1
        try:
            async with self.limiters[kind]:
                start = time.perf_counter()
                try:
                    return await fn(*args)
                finally:
                    self.service_s += 0.05 * (time.perf_counter() - start - self.service_s)
        finally:
            self.inflight -= 1

    def stats(self) -> dict:
        return {"slots": self.slots, "max_queue": self.max_queue, "running": min(self.inflight, self.slots),
                "queued": max(self.inflight - self.slots, 0), "rejected": self.rejected}


class _Sessions:
    """Open sessions by id, with their last use, closed when idle too long."""

    def __init__(self, sandbox: LocalSandbox, idle_s: float, max_sessions: int = 256):
        self.sandbox, self.idle_s, self.max_sessions = sandbox, idle_s, max_sessions
        self.lock = threading.Lock()
        self.open: dict[str, list] = {}  # id -> [session, last_used]

    def create(self, memory_mb: int) -> str:
        with self.lock:
            if len(self.open) >= self.max_sessions:
                raise Busy(f"{len(self.open)} sessions open (the limit); close some or wait for idle ones to expire",
                           retry_after_s=5.0)
        session_id = uuid.uuid4().hex
        session = self.sandbox.open_session(memory_mb=memory_mb)
        with self.lock:
            self.open[session_id] = [session, time.monotonic()]
        return session_id

    def get(self, session_id: str):
        with self.lock:
            entry = self.open.get(session_id)
            if entry is None:
                raise HTTPException(404, f"no session {session_id!r} (closed or expired after {self.idle_s:.0f}s idle)")
            entry[1] = time.monotonic()
            return entry[0]

    def close(self, session_id: str) -> None:
        with self.lock:
            entry = self.open.pop(session_id, None)
        if entry is None:
            raise HTTPException(404, f"no session {session_id!r}")
        entry[0].close()

    def sweep(self) -> int:
        now = time.monotonic()
        with self.lock:
            stale = [sid for sid, (_, used) in self.open.items() if now - used > self.idle_s]
            entries = [self.open.pop(sid) for sid in stale]
        for session, _ in entries:
            session.close()
        return len(entries)


# ---------------------------------------------------------------- SandboxFusion's response
def run_code_response(result: ExecResult | None, message: str = "") -> dict:
    """SandboxFusion's ``RunCodeResponse`` for one Python run (None: nothing ran, ``message`` says why)."""
    response = {"status": "SandboxError", "message": message, "compile_result": None, "run_result": None,
                "executor_pod_name": None, "files": {}}
    if result is None:
        return response
    run = {"status": "Finished", "execution_time": result.duration_s, "return_code": result.exit_code,
           "stdout": result.stdout, "stderr": result.stderr}
    if result.sandbox_error:
        run.update(status="Error", return_code=None)
        response.update(message=result.stderr)
    elif result.timed_out:
        run.update(status="TimeLimitExceeded", return_code=None)
        response.update(status="Failed")
    else:
        response.update(status="Success" if result.exit_code == 0 else "Failed")
    response["run_result"] = run
    return response


def _json(content, status_code: int = 200, headers: dict | None = None) -> Response:
    # Plain json.dumps: FastAPI's encoder walks the dict again, for nothing, on the hot path.
    return Response(json.dumps(content), status_code=status_code, headers=headers, media_type="application/json")


# ---------------------------------------------------------------- the app
def create_app(sandbox: LocalSandbox, session_idle_s: float = 600.0, max_queue: int = 128, max_sessions: int = 256,
               default_memory_mb: int = 1024) -> FastAPI:
    """One-shot runs execute one per worker of the sandbox (full and light ones apart) and up
    to ``max_queue`` wait; beyond, 429. Sessions run on their own workers, at most
    ``max_sessions`` open and as many running at once, ``max_queue`` more waiting."""
    light_for = getattr(sandbox, "uses_light_worker", None)
    full = getattr(sandbox, "full_workers", None) or getattr(sandbox, "workers", 2)
    runs = Admission("one-shot runs", {"full": full, "light": getattr(sandbox, "light_workers", 0)}, max_queue)
    session_runs = Admission("session runs", {"session": max_sessions}, max_queue)

    def kind(code: str) -> str:
        return "light" if light_for is not None and light_for(code) else "full"

    sessions = _Sessions(sandbox, session_idle_s, max_sessions)
    stop = threading.Event()

    def sweeper():
        while not stop.wait(min(session_idle_s / 4, 30.0)):
            sessions.sweep()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=sweeper, name="session-sweeper", daemon=True).start()
        yield
        stop.set()
        sandbox.close()

    app = FastAPI(title="agentrl sandbox", lifespan=lifespan)
    app.state.sessions = sessions
    app.state.admission = {"runs": runs, "session_runs": session_runs}

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        retry = max(exc.retry_after_s, 0.001)
        return _json({"detail": f"server busy: {exc}", "retry_after_s": round(retry, 4)}, 429,
                     headers={"Retry-After": str(max(1, math.ceil(retry)))})

    @app.exception_handler(SandboxError)
    async def sandbox_failed(request: Request, exc: SandboxError):
        if request.url.path == "/run_code":  # SandboxFusion clients read the status, not the HTTP code
            return _json(run_code_response(None, f"SandboxError: {exc}"))
        return _json({"detail": f"SandboxError: {exc}"}, 503)

    @app.get("/health")
    async def health():
        return _json({"status": "ok", "sessions": len(sessions.open), "runs": runs.stats(),
                      "session_runs": session_runs.stats()})

    @app.get("/v1/ping")  # SandboxFusion's liveness probe
    async def ping():
        return _json("pong")

    @app.post("/run")
    async def run(req: RunRequest):
        result = await runs.call(kind(req.code), sandbox.arun, req.code, req.timeout_s, req.memory_mb, req.stdin)
        return _json(result.to_dict())

    @app.post("/run_code")
    async def run_code(req: RunCodeRequest):
        if req.language != "python":
            known = "a SandboxFusion language" if req.language in SANDBOXFUSION_LANGUAGES else "an unknown language"
            return _json(run_code_response(None, f"language {req.language!r} ({known}) is not supported: "
                                                 "agentrl's sandbox runs python only; nothing was run"))
        if req.files or req.fetch_files:
            return _json(run_code_response(None, "files and fetch_files are not supported by agentrl's sandbox; "
                                                 "nothing was run"))
        memory_mb = default_memory_mb if req.memory_limit_MB < 0 else req.memory_limit_MB
        result = await runs.call(kind(req.code), sandbox.arun, req.code, req.run_timeout, memory_mb, req.stdin)
        return _json(run_code_response(result))

    @app.post("/sessions")
    async def open_session(req: SessionRequest):
        return _json({"id": await anyio.to_thread.run_sync(sessions.create, req.memory_mb)})

    @app.post("/sessions/{session_id}/run")
    async def session_run(session_id: str, req: SessionRunRequest):
        session = sessions.get(session_id)
        result = await session_runs.call("session", session.arun, req.code, req.timeout_s, req.stdin)
        return _json(result.to_dict())

    @app.delete("/sessions/{session_id}")
    async def close_session(session_id: str):
        await anyio.to_thread.run_sync(sessions.close, session_id)
        return _json({"closed": session_id})

    return app


def default_workers() -> int:
    return max(2, min(32, 2 * (os.cpu_count() or 1)))


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (no auth: keep it private)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="pre-started sandbox workers for /run and /run_code (default: 2 per CPU, at most 32: "
                             "a worker forks its next child after replying, so one per CPU leaves CPUs idle)")
    parser.add_argument("--light-workers", type=int, default=None,
                        help="more workers without numpy & co, for code that imports only the standard library "
                             "(default: as many as --workers; 0 for none)")
    parser.add_argument("--max-queue", type=int, default=128,
                        help="runs waiting for a worker before the server answers 429 + Retry-After")
    parser.add_argument("--spare-sessions", type=int, default=2, help="pre-started workers for new sessions")
    parser.add_argument("--max-sessions", type=int, default=256, help="open sessions (a worker each) before 429")
    parser.add_argument("--session-idle-s", type=float, default=600.0, help="close sessions idle this long")
    parser.add_argument("--default-memory-mb", type=int, default=1024,
                        help="memory of a /run_code run that sends memory_limit_MB -1 (SandboxFusion: no limit)")
    parser.add_argument("--max-output-bytes", type=int, default=65536, help="output kept per stream")
    parser.add_argument("--log-level", default="warning")


def cli_main(args) -> int:
    import uvicorn

    sandbox = LocalSandbox(workers=args.workers, spare_sessions=args.spare_sessions,
                           max_output_bytes=args.max_output_bytes, light_workers=args.light_workers)
    app = create_app(sandbox, session_idle_s=args.session_idle_s, max_queue=args.max_queue,
                     max_sessions=args.max_sessions, default_memory_mb=args.default_memory_mb)
    # No access log: one line per call costs more than the call on a busy server.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="serve the Python sandbox over HTTP")
    add_cli_args(_parser)
    raise SystemExit(cli_main(_parser.parse_args()))
