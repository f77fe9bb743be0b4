"""Sandbox workers forked from the process's fork server (sandbox/forkserver.py), real sandbox:
they share one pre-imported interpreter, stay isolated from each other, and survive the
server's death; ``fork_server=False`` exec's them instead; ``prepared_children`` is what each
worker forks ahead."""
from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from agentrl.sandbox import forkserver, make_sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="LocalSandbox needs Linux namespaces")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


@pytest.mark.timeout(60)
def test_workers_of_every_sandbox_are_forks_of_one_server_and_answer():
    a = make_sandbox("local", workers=1, light_workers=0, spare_sessions=0)
    b = make_sandbox("local", workers=1, light_workers=0, spare_sessions=0)
    try:
        parents = {_ppid(w.proc.pid) for sb in (a, b) for w in sb._all}
        assert len(parents) == 1 and parents != {os.getpid()}  # one server, not this process
        server = parents.pop()
        assert "forkserver.py" in open(f"/proc/{server}/cmdline").read()
        assert a.run("import numpy as np; print(np.arange(4).sum())").stdout == "6\n"
        assert b.run("print(2 + 2)").stdout == "4\n"
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_sessions_of_forked_workers_cannot_see_each_other():
    """Each forked worker still enters namespaces of its own: its own /tmp, its own /proc."""
    a = make_sandbox("local", workers=0, light_workers=0, spare_sessions=0)
    b = make_sandbox("local", workers=0, light_workers=0, spare_sessions=0)
    try:
        with a.open_session() as sa, b.open_session() as sb:
            sa.run("import subprocess\np = subprocess.Popen(['sleep', '30'])\n"
                   "open('/tmp/secret.txt', 'w').write('from a')")
            seen = sb.run("import os\nprint(sorted(os.listdir('/tmp')))\n"
                          "print([open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') if p.isdigit()])")
            assert "secret.txt" not in seen.stdout and "sleep" not in seen.stdout, seen
            assert sa.run("print(open('/tmp/secret.txt').read())").stdout == "from a\n"
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_a_dead_fork_server_is_replaced_on_the_next_worker_start():
    sb = make_sandbox("local", workers=1, light_workers=0, spare_sessions=0)
    try:
        server = _ppid(sb._all[0].proc.pid)
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{server}") and _state(server) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sb.run("print(1)").stdout == "1\n"  # the worker forked before lives on
        with sb.open_session() as s:  # a new worker: from a new server
            assert s.run("print(3 * 3)").stdout == "9\n"
            new_server = _ppid(s._worker.proc.pid)
        assert new_server != server
    finally:
        sb.close()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.timeout(60)
def test_fork_server_off_execs_each_worker_as_a_child_of_this_process():
    sb = make_sandbox("local", workers=1, light_workers=0, spare_sessions=0, fork_server=False)
    try:
        assert _ppid(sb._all[0].proc.pid) == os.getpid()
        assert sb.run("print('exec')").stdout == "exec\n"
    finally:
        sb.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prepared", [1, 2])
def test_prepared_children_is_how_many_children_a_worker_forks_ahead(prepared):
    sb = make_sandbox("local", workers=1, light_workers=0, spare_sessions=0, prepared_children=prepared)
    try:
        assert sb.run("print(1)").stdout == "1\n"
        outer = sb._all[0].proc.pid
        (zygote,) = _children(outer)  # the outer process waits on PID 1 of the namespace
        deadline = time.monotonic() + 5
        live = lambda: [c for c in _children(zygote) if _state(c) not in ("Z", "gone")]  # noqa: E731
        while len(live()) != prepared and time.monotonic() < deadline:
            time.sleep(0.01)  # the used child is dying, the next one being forked
        assert len(live()) == prepared
    finally:
        sb.close()


@pytest.mark.timeout(60)
def test_a_bad_request_to_the_fork_server_is_answered_and_it_keeps_serving():
    server = forkserver.ForkServer(sys.executable, "--preload=json")
    try:
        import socket

        socket.send_fds(server._sock, [b'{"argv": []}'], [])  # no descriptors
        reply, fds = server._receive()
        assert "expected 3 descriptors" in reply["error"] and fds == []
        server._sock.send(b"not json")
        assert "error" in server._receive()[0]
        r, w = os.pipe()
        worker = server.spawn(["--no-isolate", "--preload=json"], w)  # still forks
        os.close(r)
        os.close(w)
        assert worker.poll() is None
        worker.kill()
        assert worker.wait(timeout=5) == -signal.SIGKILL
    finally:
        server.close()
