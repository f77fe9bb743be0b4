"""HTTP front of a LocalSandbox: ``agentrl serve sandbox --host 127.0.0.1 --port 8001 --workers N``.

Endpoints (JSON): ``POST /run {code, timeout_s, memory_mb}`` -> ExecResult; ``POST /sessions
{memory_mb}`` -> ``{id}``; ``POST /sessions/{id}/run {code, timeout_s}``; ``DELETE
/sessions/{id}``; ``GET /health``. Invalid input gets HTTP 422 with a message; unknown or
expired sessions 404. Sessions idle longer than ``--session-idle-s`` are closed by a sweeper.

Isolation is LocalSandbox's (see ``local.py``); the server adds no authentication: bind it to
loopback or a private network. Use one server process (``--workers`` sets sandbox workers,
not HTTP processes) because sessions live in this process's memory.
"""
from __future__ import annotations

import argparse
import contextlib
import threading
import time
import uuid

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from agentrl.sandbox.local import LocalSandbox

MAX_CODE_CHARS = 1_000_000


class RunRequest(BaseModel):
    code: str = Field(max_length=MAX_CODE_CHARS)
    timeout_s: float = Field(5.0, gt=0, le=600)
    memory_mb: int = Field(512, ge=16, le=65536)


class SessionRequest(BaseModel):
    memory_mb: int = Field(512, ge=16, le=65536)


class SessionRunRequest(BaseModel):
    code: str = Field(max_length=MAX_CODE_CHARS)
    timeout_s: float = Field(5.0, gt=0, le=600)


class _Sessions:
    """Open sessions by id, with their last use, closed when idle too long."""

    def __init__(self, sandbox: LocalSandbox, idle_s: float):
        self.sandbox, self.idle_s = sandbox, idle_s
        self.lock = threading.Lock()
        self.open: dict[str, list] = {}  # id -> [session, last_used]

    def create(self, memory_mb: int) -> str:
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


def create_app(sandbox: LocalSandbox, session_idle_s: float = 600.0) -> FastAPI:
    sessions = _Sessions(sandbox, session_idle_s)
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

    # Plain ``def`` endpoints: FastAPI runs them in its thread pool, so blocking runs overlap.
    @app.get("/health")
    def health():
        return {"status": "ok", "sessions": len(sessions.open)}

    @app.post("/run")
    def run(req: RunRequest):
        return sandbox.run(req.code, timeout_s=req.timeout_s, memory_mb=req.memory_mb).to_dict()

    @app.post("/sessions")
    def open_session(req: SessionRequest):
        return {"id": sessions.create(req.memory_mb)}

    @app.post("/sessions/{session_id}/run")
    def session_run(session_id: str, req: SessionRunRequest):
        return sessions.get(session_id).run(req.code, timeout_s=req.timeout_s).to_dict()

    @app.delete("/sessions/{session_id}")
    def close_session(session_id: str):
        sessions.close(session_id)
        return {"closed": session_id}

    return app


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (no auth: keep it private)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2, help="pre-started sandbox workers for /run")
    parser.add_argument("--spare-sessions", type=int, default=2, help="pre-started workers for new sessions")
    parser.add_argument("--session-idle-s", type=float, default=600.0, help="close sessions idle this long")
    parser.add_argument("--max-output-bytes", type=int, default=65536, help="output kept per stream")
    parser.add_argument("--log-level", default="warning")


def cli_main(args) -> int:
    import uvicorn

    sandbox = LocalSandbox(workers=args.workers, spare_sessions=args.spare_sessions,
                           max_output_bytes=args.max_output_bytes)
    app = create_app(sandbox, session_idle_s=args.session_idle_s)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="serve the Python sandbox over HTTP")
    add_cli_args(_parser)
    raise SystemExit(cli_main(_parser.parse_args()))
