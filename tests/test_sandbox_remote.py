"""The sandbox HTTP server and RemoteSandbox, against a real uvicorn server on a loopback port."""
from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import pytest

from agentrl.sandbox import SandboxError, make_sandbox
from agentrl.sandbox.local import LocalSandbox
from agentrl.sandbox.server import create_app

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server runs a LocalSandbox")


@pytest.fixture(scope="module")
def server():
    import uvicorn

    app = create_app(LocalSandbox(workers=2, spare_sessions=1), session_idle_s=2.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def remote(server):
    sb = make_sandbox("remote", url=server[1], timeout_s=10)
    yield sb
    sb.close()


@pytest.mark.timeout(30)
def test_health(remote):
    assert remote.health()["status"] == "ok"


@pytest.mark.timeout(30)
def test_run(remote):
    result = remote.run("print(6 * 7)")
    assert (result.stdout, result.exit_code, result.timed_out) == ("42\n", 0, False)


@pytest.mark.timeout(30)
def test_run_timeout_and_oom(remote):
    assert remote.run("while True: pass", timeout_s=0.5).timed_out
    assert remote.run("x = bytearray(400 * 2**20)", memory_mb=64).oom


@pytest.mark.timeout(30)
def test_session_roundtrip(remote, server):
    session = remote.open_session()
    session.run("x = 20")
    assert session.run("print(x + 1)").stdout == "21\n"
    session.close()
    with pytest.raises(SandboxError, match="HTTP 404"):
        remote._request("POST", f"/sessions/{session.id}/run", {"code": "print(x)"})


@pytest.mark.timeout(30)
def test_session_expires_when_idle(remote, server):
    session = remote.open_session()
    session.run("x = 1")
    time.sleep(2.5)
    server[0].state.sessions.sweep()  # the background sweeper runs every 0.5 s too; be deterministic
    with pytest.raises(SandboxError, match="expired"):
        session.run("print(x)")


@pytest.mark.timeout(30)
def test_bad_request_is_422(server, remote):
    response = httpx.post(server[1] + "/run", json={"code": 123, "timeout_s": -1})
    assert response.status_code == 422
    assert "timeout_s" in response.text
    with pytest.raises(ValueError, match="rejected"):
        remote.run("print(1)", timeout_s=0)


@pytest.mark.timeout(30)
def test_concurrent_requests(remote):
    results = [None] * 8
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, remote.run(f"print({i})"))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]


@pytest.mark.timeout(30)
def test_unreachable_server_names_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    sb = make_sandbox("remote", url=f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01)
    with pytest.raises(SandboxError, match=f"127.0.0.1:{port}"):
        sb.run("print(1)")
    sb.close()
