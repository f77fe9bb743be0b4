"""The sandbox HTTP server and RemoteSandbox, against a real uvicorn server on a loopback port."""
from __future__ import annotations

import socket
import sys
import threading
import time

import httpx
import pytest

from agentrl.sandbox.remote import RemoteSandbox, exec_result_from_run_code
from agentrl.sandbox import ExecResult, SandboxError, make_sandbox
from agentrl.sandbox.local import LocalSandbox
from agentrl.sandbox.server import create_app

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server runs a LocalSandbox")


def _serve(app):
    import uvicorn

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
    return srv, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def server():
    app = create_app(LocalSandbox(workers=2, spare_sessions=1), session_idle_s=2.0)
    srv, thread, url = _serve(app)
    yield app, url
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


@pytest.mark.timeout(30)
def test_stdin_run_and_session(remote):
    assert remote.run("print(input()[::-1])", stdin="abc").stdout == "cba\n"
    assert remote.run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"
    with remote.open_session() as session:
        session.run("first = input()", stdin="one")
        assert session.run("print(first, input())", stdin="two").stdout == "one two\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path, body, field", [
    ("/run", {"code": "print(1)", "timeout": 3}, "timeout"),  # misspelled: was silently ignored
    ("/run", {"code": "print(1)", "memory_limit_MB": 64}, "memory_limit_MB"),  # another API's field
    ("/run", {"code": "print(1)", "timeout_s": "3"}, "timeout_s"),  # a string where a number goes
    ("/run", {"code": "print(1)", "memory_mb": True}, "memory_mb"),
    ("/run", {"code": "print(1)", "stdin": 5}, "stdin"),
    ("/sessions", {"memory": 256}, "memory"),
    ("/run_code", {"code": "print(1)", "language": "python", "timeout": 3}, "timeout"),
    ("/run_code", {"code": "print(1)", "language": "python", "memory_limit_MB": 8}, "memory_limit_MB"),
])
def test_unknown_or_mistyped_fields_are_422(server, path, body, field):
    response = httpx.post(server[1] + path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


@pytest.mark.timeout(30)
def test_session_run_unknown_field_is_422(server, remote):
    session = remote.open_session()
    response = httpx.post(f"{server[1]}/sessions/{session.id}/run", json={"code": "x = 1", "timeout_ms": 5})
    assert response.status_code == 422 and "timeout_ms" in response.text
    session.close()


@pytest.mark.timeout(30)
def test_remote_sandbox_speaks_sandboxfusion(server):
    # RemoteSandbox(api="sandboxfusion") against our own /run_code: the same client works on a
    # SandboxFusion deployment; the URL may be verl's (ending in /run_code)
    sf = RemoteSandbox(server[1] + "/run_code", api="sandboxfusion", timeout_s=10)
    try:
        assert sf.health() == {"status": "ok"}
        result = sf.run("print(int(input()) * 2)", stdin="21")
        assert (result.stdout, result.exit_code, result.timed_out) == ("42\n", 0, False)
        assert sf.run("while True: pass", timeout_s=0.5).timed_out
        assert sf.run("x = bytearray(400 * 2**20)", memory_mb=64).oom
        assert sf.run("import sys; sys.exit(4)").exit_code == 4
        with sf.open_session() as session:  # no sessions there: earlier snippets are replayed silently
            assert session.run("x = 20\nprint('once')").stdout == "once\n"
            assert session.run("y = x + 1").stdout == ""
            result = session.run("print(x + y, input())", stdin="in")
            assert (result.stdout, result.stderr) == ("41 in\n", "")
            assert "ZeroDivisionError" in session.run("1 / 0").stderr
            assert session.run("print(y)").stdout == "21\n"
    finally:
        sf.close()


def test_exec_result_from_run_code_errors():
    with pytest.raises(SandboxError, match="not supported"):
        exec_result_from_run_code({"status": "SandboxError", "message": "language 'cpp' is not supported",
                                   "run_result": None})
    with pytest.raises(SandboxError, match="not a SandboxFusion"):
        exec_result_from_run_code({"detail": "nope"})
    result = exec_result_from_run_code({"status": "Failed", "message": "", "run_result": {
        "status": "TimeLimitExceeded", "execution_time": 1.0, "return_code": None, "stdout": "a", "stderr": None}})
    assert (result.timed_out, result.exit_code, result.stdout, result.stderr) == (True, -9, "a", "")


def test_exec_result_from_dict_ignores_unknown_fields():
    data = ExecResult("1\n", "", 0).to_dict() | {"from_a_newer_server": 1}
    assert ExecResult.from_dict(data) == ExecResult("1\n", "", 0)


@pytest.fixture()
def tiny_server():
    """One worker, a queue of one: the third concurrent run is refused."""
    app = create_app(LocalSandbox(workers=1, light_workers=0, spare_sessions=0), max_queue=1)
    srv, thread, url = _serve(app)
    yield app, url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.timeout(60)
def test_full_queue_answers_429_with_retry_after(tiny_server):
    app, url = tiny_server
    code = "import time; time.sleep(3); print('done')"
    responses = [None] * 8

    def post(i):  # both one-shot endpoints share the queue
        if i % 2:
            responses[i] = httpx.post(url + "/run", json={"code": code, "timeout_s": 5}, timeout=30)
        else:
            responses[i] = httpx.post(url + "/run_code", json={"code": code, "language": "python"}, timeout=30)

    start = time.monotonic()
    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["retry_after_s"] > 0 and "busy" in r.json()["detail"]
    # refused at once, not after waiting for the queue (the admitted ones take 3 or 6 s)
    assert max(r.elapsed.total_seconds() for r in refused) < 2.0
    assert app.state.admission["runs"].stats()["rejected"] == len(refused)
    assert time.monotonic() - start < 30


@pytest.mark.timeout(120)
def test_remote_sandbox_retries_429_until_all_succeed(tiny_server):
    app, url = tiny_server
    sb = make_sandbox("remote", url=url, timeout_s=30, backoff_s=0.05)
    results = [None] * 10

    def run(i):
        results[i] = sb.run(f"import time; time.sleep(0.1); print({i})")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(10)]
    assert sb.busy_retries >= 1 and app.state.admission["runs"].stats()["rejected"] == sb.busy_retries
    sb.close()


@pytest.mark.timeout(30)
def test_remote_sandbox_gives_up_when_busy_too_long(tiny_server):
    app, url = tiny_server
    sb = make_sandbox("remote", url=url, timeout_s=30, busy_wait_s=0.5)
    blockers = [threading.Thread(target=lambda: httpx.post(url + "/run", json={
        "code": "import time; time.sleep(3)", "timeout_s": 5}, timeout=30)) for _ in range(2)]
    for t in blockers:
        t.start()
    deadline = time.monotonic() + 10
    while app.state.admission["runs"].inflight < 2:  # both places (running + queued) taken
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(SandboxError, match="busy"):
        sb.run("print(1)")
    for t in blockers:
        t.join()
    sb.close()


@pytest.mark.timeout(60)
def test_session_limit_is_429_and_ping(tiny_server):
    app, url = tiny_server
    assert httpx.get(url + "/v1/ping").json() == "pong"  # SandboxFusion's liveness probe
    app.state.sessions.max_sessions = 1
    first = httpx.post(url + "/sessions", json={})
    assert first.status_code == 200
    second = httpx.post(url + "/sessions", json={})
    assert second.status_code == 429 and "sessions open" in second.json()["detail"] and second.headers["retry-after"]
    httpx.delete(f"{url}/sessions/{first.json()['id']}")
    assert httpx.post(url + "/sessions", json={}).status_code == 200
    health = httpx.get(url + "/health").json()
    assert health["sessions"] == 1 and health["runs"]["slots"] == 1 and health["runs"]["max_queue"] == 1
