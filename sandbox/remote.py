"""RemoteSandbox: the HTTP client of ``agentrl serve sandbox`` (see ``server.py``), or of a
SandboxFusion deployment (``api="sandboxfusion"``).

Isolation is whatever the server does (LocalSandbox on the server machine); this module only
moves code and results. Retries happen only where they cannot run code twice: connection
failures (the request never reached the server) a bounded number of times with jittered
exponential backoff, and HTTP 429 (the server refused it unrun) for up to ``busy_wait_s``
seconds, each wait at least the server's ``Retry-After`` plus jitter so that a burst of
refused clients does not come back in step. Then a ``SandboxError`` names the URL.

SandboxFusion (``POST /run_code``) has no sessions: a session there re-runs the episode's
earlier code, output discarded, before each new snippet. State is rebuilt, not kept, so
randomness, time and side effects of earlier snippets happen again, and a call costs more as
the episode grows; ``agentrl serve sandbox`` keeps real sessions.
"""
from __future__ import annotations

import email.utils
import random
import threading
import time

import httpx

from agentrl.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxSession

HTTP_MARGIN_S = 10.0  # the server enforces the code's timeout; allow this much for transport
APIS = ("agentrl", "sandboxfusion")


class RemoteSandbox(Sandbox):
    def __init__(self, url: str = "http://127.0.0.1:8001", timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2, max_connections: int = 64, api: str = "agentrl",
                 busy_wait_s: float = 120.0):
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {api!r}")
        url = url.rstrip("/")
        if api == "sandboxfusion" and url.endswith("/run_code"):  # verl's configs give the endpoint itself
            url = url[: -len("/run_code")]
        self.url = url
        self.api = api
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.busy_wait_s = busy_wait_s
        self.busy_retries = 0  # 429s retried so far (for tests and logs)
        self._count_lock = threading.Lock()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, limits=limits)

    def _request(self, method: str, path: str, json: dict | None = None, code_timeout_s: float = 0.0) -> dict:
        timeout = httpx.Timeout(max(self.timeout_s, code_timeout_s + HTTP_MARGIN_S), connect=min(self.timeout_s, 10.0))
        failures, busy, busy_until = 0, 0, None
        while True:
            try:
                response = self._client.request(method, path, json=json, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # nothing ran: safe to retry
                if failures == self.retries:
                    raise SandboxError(f"sandbox server {self.url} unreachable after {failures + 1} attempts: {e}") from e
                time.sleep(self.backoff_s * 2**failures * random.uniform(0.5, 1.5))
                failures += 1
                continue
            except httpx.HTTPError as e:
                raise SandboxError(f"sandbox server {self.url}{path} failed: {type(e).__name__}: {e}") from e
            if response.status_code != 429:
                return _check(response, self.url + path)
            # Refused before running: wait at least what the server asks, plus jitter, then retry.
            now = time.monotonic()
            busy_until = busy_until or now + self.busy_wait_s
            delay = max(_retry_after_s(response), self.backoff_s * 2 ** min(busy, 5)) * random.uniform(1.0, 1.5)
            if now + delay > busy_until:
                raise SandboxError(f"sandbox server {self.url}{path} still busy (HTTP 429) after "
                                   f"{self.busy_wait_s:.0f}s of retries: {_detail(response)}")
            busy += 1
            with self._count_lock:
                self.busy_retries += 1
            time.sleep(delay)

    def health(self) -> dict:
        if self.api == "sandboxfusion":
            return {"status": "ok" if self._request("GET", "/v1/ping") == "pong" else "unexpected answer"}
        return self._request("GET", "/health")

    def run(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512, stdin: str | None = None) -> ExecResult:
        if self.api == "sandboxfusion":
            return self._run_code(code, timeout_s, memory_mb, stdin)
        body = {"code": code, "timeout_s": timeout_s, "memory_mb": memory_mb, "stdin": stdin}
        return ExecResult.from_dict(self._request("POST", "/run", body, code_timeout_s=timeout_s))

    def _run_code(self, code: str, timeout_s: float, memory_mb: int, stdin: str | None) -> ExecResult:
        body = {"code": code, "language": "python", "run_timeout": timeout_s, "compile_timeout": timeout_s,
                "memory_limit_MB": memory_mb, "stdin": stdin, "files": {}, "fetch_files": []}
        return exec_result_from_run_code(self._request("POST", "/run_code", body, code_timeout_s=timeout_s))

    def open_session(self, memory_mb: int = 512) -> SandboxSession:
        if self.api == "sandboxfusion":
            return ReplaySession(self, memory_mb)
        return RemoteSession(self, self._request("POST", "/sessions", {"memory_mb": memory_mb})["id"])

    def close(self) -> None:
        self._client.close()


class RemoteSession(SandboxSession):
    def __init__(self, sandbox: RemoteSandbox, session_id: str):
        self._sandbox = sandbox
        self.id = session_id
        self._closed = False

    def run(self, code: str, timeout_s: float = 5.0, stdin: str | None = None) -> ExecResult:
        if self._closed:
            raise SandboxError("the session is closed")
        body = {"code": code, "timeout_s": timeout_s, "stdin": stdin}
        return ExecResult.from_dict(self._sandbox._request("POST", f"/sessions/{self.id}/run", body,
                                                           code_timeout_s=timeout_s))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sandbox._request("DELETE", f"/sessions/{self.id}")
        except SandboxError:
            pass  # already expired or the server is gone: nothing left to free


_REPLAY = '''import os as _os, sys as _sys
_saved = _sys.stdin, _sys.stdout, _sys.stderr
_sys.stdin = open(_os.devnull)
_sys.stdout = _sys.stderr = open(_os.devnull, "w")
for _cell in {cells!r}:
    try:
        exec(compile(_cell, "<earlier cell>", "exec"), globals())
    except BaseException:
        pass
_sys.stdin, _sys.stdout, _sys.stderr = _saved
del _os, _sys, _saved, _cell
exec(compile({code!r}, "<code>", "exec"), globals())
'''


class ReplaySession(SandboxSession):
    """A session on a server without sessions (SandboxFusion): each run replays the earlier
    snippets silently (stdin empty, output discarded, errors ignored) before the new one."""

    def __init__(self, sandbox: RemoteSandbox, memory_mb: int):
        self._sandbox = sandbox
        self._memory_mb = memory_mb
        self._cells: list[str] = []
        self._replay_s = 0.0  # time the earlier snippets took: the replay gets it on top of the timeout
        self._closed = False

    def run(self, code: str, timeout_s: float = 5.0, stdin: str | None = None) -> ExecResult:
        if self._closed:
            raise SandboxError("the session is closed")
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        program = _REPLAY.format(cells=self._cells, code=code) if self._cells else code
        result = self._sandbox._run_code(program, timeout_s + self._replay_s, self._memory_mb, stdin)
        self._cells.append(code)  # even when it failed: what ran before the error had its effects
        self._replay_s += min(result.duration_s, timeout_s)
        return result

    def close(self) -> None:
        self._closed = True
        self._cells.clear()


def exec_result_from_run_code(data: dict) -> ExecResult:
    """An ``ExecResult`` from SandboxFusion's ``RunCodeResponse``; ``SandboxError`` when the
    sandbox (not the code) failed or the response is not one."""
    if not isinstance(data, dict) or "status" not in data:
        raise SandboxError(f"not a SandboxFusion /run_code response: {str(data)[:300]}")
    run = data.get("run_result") or {}
    if data["status"] == "SandboxError" or run.get("status") == "Error" or not run:
        raise SandboxError(f"SandboxFusion answered {data['status']}: {data.get('message') or run.get('stderr')}")
    timed_out = run.get("status") == "TimeLimitExceeded"
    code = run.get("return_code")
    stderr = run.get("stderr") or ""
    last_line = stderr.rstrip().rsplit("\n", 1)[-1]
    return ExecResult(stdout=run.get("stdout") or "", stderr=stderr,
                      exit_code=code if code is not None else (-9 if timed_out else -1), timed_out=timed_out,
                      oom=not timed_out and code != 0 and last_line.startswith("MemoryError"),
                      duration_s=float(run.get("execution_time") or 0.0))


def _retry_after_s(response: httpx.Response) -> float:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date); 0 if absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _check(response: httpx.Response, where: str):
    if response.status_code == 422:
        raise ValueError(f"sandbox server rejected the request ({where}): {_detail(response)}")
    if response.status_code >= 400:
        raise SandboxError(f"sandbox server {where} answered HTTP {response.status_code}: {_detail(response)}")
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") if isinstance(body, dict) else body)
    except ValueError:
        return response.text[:500]
