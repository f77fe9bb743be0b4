"""verl's SandboxFusion client (tests/reference/verl_sandbox_fusion.py, copied verbatim from
volcengine/verl at commit b178a3cd56f58b2d502255daba591e92833930a7) against the real
``agentrl serve sandbox`` ``/run_code``: the request verl builds, what its reward makes of each
answer, and what its tool shows the model.
The server runs on an ephemeral loopback port in a thread, as in test_sandbox_remote.py.
"""
from __future__ import annotations

import concurrent.futures
import json
import socket
import sys
import threading
import time

import pytest

pytest.importorskip("requests", reason="verl's client uses requests (installed with the docker extra)")

from agentrl.sandbox.local import LocalSandbox  # noqa: E402
from agentrl.sandbox.server import create_app  # noqa: E402
from reference.verl_sandbox_fusion import SandboxFusionTool, _process_single_case, call_sandbox_api  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server runs a LocalSandbox")



class _Recorder:
    """ASGI wrapper keeping the raw JSON bodies posted to /run_code, to check verl's request shape."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/run_code":
            return await self.app(scope, receive, send)
        chunks = []

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(b"".join(chunks)))
            return message

        return await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def server():
    import uvicorn

    app = create_app(LocalSandbox(workers=2, spare_sessions=0))
    recorder = _Recorder(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(recorder, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/run_code", recorder
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def url(server):
    return server[0]


@pytest.mark.timeout(60)
def test_request_shape_and_success(server):
    url, recorder = server
    response, error = call_sandbox_api(url, "print(6 * 7)", None, 10, 10, 1024, "python")
    assert error is None
    # what verl sent, as the server received it
    assert recorder.bodies[-1] == {"compile_timeout": 10, "run_timeout": 10, "code": "print(6 * 7)", "stdin": None,
                                   "memory_limit_MB": 1024, "language": "python", "files": {}, "fetch_files": []}
    # SandboxFusion's RunCodeResponse, field for field
    assert set(response) == {"status", "message", "compile_result", "run_result", "executor_pod_name", "files"}
    assert response["status"] == "Success" and response["compile_result"] is None and response["files"] == {}
    run = response["run_result"]
    assert set(run) == {"status", "execution_time", "return_code", "stdout", "stderr"}
    assert (run["status"], run["return_code"], run["stdout"], run["stderr"]) == ("Finished", 0, "42\n", "")
    assert 0 <= run["execution_time"] < 5


@pytest.mark.timeout(60)
def test_verl_scores_a_correct_and_a_wrong_answer_through_stdin(url):
    code = "a, b = map(int, input().split())\nprint(a + b)"
    status, meta = _process_single_case(0, "3 4\n", "7", url, code, 10, 1024, "python")
    assert (status, meta["status"], meta["api_status"], meta["stdout"]) == (True, "success", "Success", "7\n")
    status, meta = _process_single_case(1, "3 5\n", "7", url, code, 10, 1024, "python")
    assert (status, meta["status"], meta["stdout"]) == (False, "wrong_answer", "8\n")


@pytest.mark.timeout(60)
def test_verl_function_wrapper_reads_json_lines_from_stdin(url):
    # fn_name: verl wraps the code in a driver that reads the arguments from stdin, one JSON per line
    status, meta = _process_single_case(0, "[1, 2, 3]\n10", "16", url, "def f(xs, k):\n    return sum(xs) + k",
                                        10, 1024, "python", None, "f")
    assert (status, meta["status"]) == (True, "success"), meta


@pytest.mark.timeout(60)
def test_verl_timeout_is_time_limit_exceeded(url):
    start = time.monotonic()
    status, meta = _process_single_case(0, None, None, url, "print('started', flush=True)\nwhile True: pass", 1,
                                        1024, "python")
    assert time.monotonic() - start < 8
    assert (status, meta["status"], meta["api_status"], meta["run_status"]) == (-3, "timeout", "Failed",
                                                                                "TimeLimitExceeded")
    assert meta["stdout"] == "started\n" and meta["exit_code"] is None


@pytest.mark.timeout(60)
def test_verl_runtime_error(url):
    status, meta = _process_single_case(0, None, None, url, "raise ValueError('boom')", 10, 1024, "python")
    assert (status, meta["status"], meta["api_status"], meta["run_status"], meta["exit_code"]) == (
        -2, "runtime_error", "Failed", "Finished", 1)
    assert "ValueError: boom" in meta["stderr"]


@pytest.mark.timeout(60)
def test_verl_memory_limit_is_honoured(url):
    code = "x = bytearray(300 * 2**20)\nprint('allocated')"
    status, meta = _process_single_case(0, None, None, url, code, 10, 64, "python")
    assert (status, meta["status"], meta["exit_code"]) == (-2, "runtime_error", 1)
    assert "MemoryError" in meta["stderr"]
    status, meta = _process_single_case(0, None, None, url, code, 10, 1024, "python")
    assert (status, meta["stdout"]) == (True, "allocated\n")


@pytest.mark.timeout(60)
def test_verl_other_language_is_not_run_as_python(server):
    url, recorder = server
    # valid Python too: a silent run as Python would print 3
    response, error = call_sandbox_api(url, "print(1 + 2)", None, 10, 10, 1024, "ruby")
    assert error is None and response["status"] == "SandboxError" and response["run_result"] is None
    assert "ruby" in response["message"] and "python only" in response["message"]
    status, meta = _process_single_case(0, None, None, url, "print(1 + 2)", 10, 1024, "cpp")
    assert (status, meta["status"], meta["stdout"]) == (-1, "sandbox_error", None)
    # a language verl itself does not know never reaches the server (verl refuses it first)
    sent = len(recorder.bodies)
    response, error = call_sandbox_api(url, "print(1)", None, 10, 10, 1024, "cobol")
    assert response is None and "Unsupported language: cobol" in error and len(recorder.bodies) == sent


@pytest.mark.timeout(60)
def test_sandbox_fusion_tool_execute_code(url):
    tool = SandboxFusionTool(url)
    assert tool.execute_code("i1", "import sys\nprint('out')\nprint('err', file=sys.stderr)").text == "out\nerr\n"
    assert tool.execute_code("i2", "print('x')\nraise SystemExit(3)").text == "x\n"  # Finished, exit 3
    assert tool.execute_code("i3", "while True: pass", timeout=1).text == "no stdout here"
    assert tool.execute_code("i4", "print(1)", language="bash").text == "no stdout here"


@pytest.mark.timeout(120)
def test_verl_concurrent_cases_like_check_correctness(url):
    # check_correctness fans the cases out over a thread pool; 24 at once against 2 workers
    code = "n = int(input())\nprint(n * n)"
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda i: _process_single_case(i, str(i), str(i * i), url, code, 10, 1024, "python"),
                                range(24)))
    assert [status for status, _ in results] == [True] * 24
