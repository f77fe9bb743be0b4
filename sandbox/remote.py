"""RemoteSandbox: the HTTP client of ``agentrl serve sandbox`` (see ``server.py``).

Isolation is whatever the server does (LocalSandbox on the server machine); this module only
moves code and results. Connection failures are retried a bounded number of times with
exponential backoff, only where retrying cannot run code twice (the request never reached
the server); then a ``SandboxError`` names the URL.
"""
from __future__ import annotations

import time

import httpx

from agentrl.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxSession

HTTP_MARGIN_S = 10.0  # the server enforces the code's timeout; allow this much for transport


class RemoteSandbox(Sandbox):
    def __init__(self, url: str = "http://127.0.0.1:8001", timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2, max_connections: int = 64):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, limits=limits)

    def _request(self, method: str, path: str, json: dict | None = None, code_timeout_s: float = 0.0) -> dict:
        timeout = httpx.Timeout(max(self.timeout_s, code_timeout_s + HTTP_MARGIN_S), connect=min(self.timeout_s, 10.0))
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, path, json=json, timeout=timeout)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # nothing ran: safe to retry
                if attempt == self.retries:
                    raise SandboxError(f"sandbox server {self.url} unreachable after {attempt + 1} attempts: {e}") from e
                time.sleep(self.backoff_s * 2**attempt)
            except httpx.HTTPError as e:
                raise SandboxError(f"sandbox server {self.url}{path} failed: {type(e).__name__}: {e}") from e
        return _check(response, self.url + path)

    def health(self) -> dict:
        return self._request("GET", "/health")

    def run(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512) -> ExecResult:
        body = {"code": code, "timeout_s": timeout_s, "memory_mb": memory_mb}
        return ExecResult(**self._request("POST", "/run", body, code_timeout_s=timeout_s))

    def open_session(self, memory_mb: int = 512) -> "RemoteSession":
        return RemoteSession(self, self._request("POST", "/sessions", {"memory_mb": memory_mb})["id"])

    def close(self) -> None:
        self._client.close()


class RemoteSession(SandboxSession):
    def __init__(self, sandbox: RemoteSandbox, session_id: str):
        self._sandbox = sandbox
        self.id = session_id
        self._closed = False

    def run(self, code: str, timeout_s: float = 5.0) -> ExecResult:
        if self._closed:
            raise SandboxError("the session is closed")
        body = {"code": code, "timeout_s": timeout_s}
        return ExecResult(**self._sandbox._request("POST", f"/sessions/{self.id}/run", body, code_timeout_s=timeout_s))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sandbox._request("DELETE", f"/sessions/{self.id}")
        except SandboxError:
            pass  # already expired or the server is gone: nothing left to free


def _check(response: httpx.Response, where: str) -> dict:
    if response.status_code == 422:
        raise ValueError(f"sandbox server rejected the request ({where}): {_detail(response)}")
    if response.status_code >= 400:
        raise SandboxError(f"sandbox server {where} answered HTTP {response.status_code}: {_detail(response)}")
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:500]
