"""DockerSandbox against a real Docker engine; skipped (with the reason) when there is none.

Set up the engine and the image with ``bash sandbox/docker_setup.sh`` (no registry needed).
"""
from __future__ import annotations

import pytest

from agentrl.sandbox import SandboxError

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def sandbox():
    from agentrl.sandbox.docker import DockerSandbox

    try:
        sb = DockerSandbox(workers=1)
    except SandboxError as e:  # no engine reachable, or the image was never built
        pytest.skip(f"DockerSandbox unavailable: {e}")
    yield sb
    sb.close()


@pytest.mark.timeout(60)
def test_run(sandbox):
    result = sandbox.run("import numpy as np\nprint(int(np.arange(4).sum()))")
    assert (result.stdout, result.exit_code) == ("6\n", 0)


@pytest.mark.timeout(60)
def test_stdin_and_empty_stdin(sandbox):
    assert sandbox.run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
    result = sandbox.run("import sys\nprint(repr(sys.stdin.read()))")  # no stdin: EOF at once
    assert (result.stdout, result.exit_code) == ("''\n", 0)


@pytest.mark.timeout(60)
def test_timeout_then_still_works(sandbox):
    assert sandbox.run("while True: pass", timeout_s=0.5).timed_out
    assert sandbox.run("print('alive')").stdout == "alive\n"


@pytest.mark.timeout(60)
def test_memory_bomb_is_oom(sandbox):
    assert sandbox.run("x = bytearray(800 * 2**20)", memory_mb=100).oom


@pytest.mark.timeout(60)
def test_fork_bomb_is_contained(sandbox):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert sandbox.run(code, timeout_s=1).timed_out
    assert sandbox.run("print('alive')").stdout == "alive\n"


@pytest.mark.timeout(60)
def test_no_network(sandbox):
    result = sandbox.run("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
    assert result.exit_code != 0


@pytest.mark.timeout(60)
def test_read_only_root_and_unprivileged(sandbox):
    result = sandbox.run("import os\nprint(os.getuid())\nopen('/opt/agentrl/x', 'w')")
    assert result.stdout == "65534\n" and result.exit_code != 0


@pytest.mark.timeout(60)
def test_session_state_and_close(sandbox):
    session = sandbox.open_session()
    session.run("x = 5")
    assert session.run("print(x * 2)").stdout == "10\n"
    container = session._worker.container
    session.close()
    with pytest.raises(Exception):
        container.reload()  # removed
