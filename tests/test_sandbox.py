"""LocalSandbox behaviour on good code: results, limits, sessions, threads, cleanup (real sandbox)."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from agentrl.sandbox import ExecResult, make_sandbox
from agentrl.tools import PythonTool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="LocalSandbox needs Linux namespaces")


@pytest.fixture(scope="module")
def sandbox():
    sb = make_sandbox("local", workers=2)
    yield sb
    sb.close()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (namespaced processes included: they are visible here)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


@pytest.mark.timeout(30)
def test_print(sandbox):
    result = sandbox.run("print(1 + 1)")
    assert isinstance(result, ExecResult)
    assert (result.stdout, result.stderr, result.exit_code) == ("2\n", "", 0)
    assert not (result.timed_out or result.oom or result.truncated)


@pytest.mark.timeout(30)
def test_exception_gives_traceback_and_exit_code(sandbox):
    result = sandbox.run("x = 1\nraise ValueError('boom')")
    assert result.exit_code == 1
    assert "ValueError: boom" in result.stderr and "_runner" not in result.stderr


@pytest.mark.timeout(30)
def test_sys_exit_code(sandbox):
    assert sandbox.run("import sys; sys.exit(3)").exit_code == 3


@pytest.mark.timeout(30)
def test_numpy_preloaded_and_fresh_state_per_run(sandbox):
    result = sandbox.run("import numpy as np\nprint(int(np.arange(10).sum()))\nleak = 1")
    assert result.stdout == "45\n"
    assert "NameError" in sandbox.run("print(leak)").stderr


@pytest.mark.timeout(30)
def test_private_writable_cwd(sandbox):
    result = sandbox.run("open('f.txt', 'w').write('hi'); print(open('f.txt').read())")
    assert result.stdout == "hi\n"
    assert "FileNotFoundError" in sandbox.run("open('f.txt')").stderr  # a fresh dir per run


@pytest.mark.timeout(30)
def test_random_differs_between_runs(sandbox):
    code = "import random, numpy as np; print(random.random(), np.random.rand())"
    assert sandbox.run(code).stdout != sandbox.run(code).stdout


@pytest.mark.timeout(30)
def test_timeout(sandbox):
    start = time.monotonic()
    result = sandbox.run("print('before', flush=True)\nwhile True: pass", timeout_s=0.5)
    assert result.timed_out and result.stdout == "before\n"
    assert time.monotonic() - start < 3


@pytest.mark.timeout(30)
def test_memory_limit(sandbox):
    result = sandbox.run("x = bytearray(300 * 2**20)", memory_mb=100)
    assert result.oom and result.exit_code != 0
    assert sandbox.run("x = bytearray(50 * 2**20); print('ok')", memory_mb=100).stdout == "ok\n"


@pytest.mark.timeout(30)
def test_bad_arguments(sandbox):
    with pytest.raises(TypeError):
        sandbox.run(b"print(1)")
    with pytest.raises(ValueError):
        sandbox.run("print(1)", timeout_s=-1)


@pytest.mark.timeout(60)
def test_concurrent_threads(sandbox):
    results = {}

    def work(i):
        results[i] = sandbox.run(f"print({i} * 2)")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * 2}\n" for i in range(16)}


@pytest.mark.timeout(30)
def test_session_keeps_state(sandbox):
    with sandbox.open_session() as session:
        assert session.run("import numpy as np\nx = np.arange(3)").exit_code == 0
        assert session.run("x = x + 1\nprint(x.tolist())").stdout == "[1, 2, 3]\n"
        assert session.run("print(x.sum())").stdout == "6\n"


@pytest.mark.timeout(30)
def test_session_reset_after_timeout(sandbox):
    with sandbox.open_session() as session:
        session.run("x = 42")
        result = session.run("while True: pass", timeout_s=0.5)
        assert result.timed_out and "reset" in result.stderr
        after = session.run("print(x)")
        assert "NameError" in after.stderr and "restarted" in after.stderr
        assert session.run("x = 1; print(x)").stdout == "1\n"


@pytest.mark.timeout(30)
def test_session_reset_after_oom(sandbox):
    with sandbox.open_session(memory_mb=100) as session:
        session.run("y = 1")
        assert session.run("z = bytearray(500 * 2**20)").oom
        assert "NameError" in session.run("print(y)").stderr


@pytest.mark.timeout(30)
def test_session_close_leaves_no_process_and_the_next_session_on_its_zygote_starts_fresh(sandbox):
    duration = f"300.{os.getpid()}{time.time_ns() % 10**6}"  # a sleep no other process runs
    session = sandbox.open_session()
    session.run(f"import subprocess\np = subprocess.Popen(['sleep', '{duration}'])\nx = 1\n"
                "open('left.txt', 'w').write('from the last episode')\nimport os\nprint(os.getcwd())")
    worker = session._worker
    assert _sleepers(duration)
    session.close()
    deadline = time.monotonic() + 5
    while _sleepers(duration) and time.monotonic() < deadline:  # SIGKILLed; the exit is the kernel's
        time.sleep(0.05)
    assert not _sleepers(duration)
    with pytest.raises(Exception):
        session.run("print(1)")
    assert worker.proc.poll() is None and worker in sandbox._spares  # the zygote is kept for the next session
    with sandbox.open_session() as again:
        assert again._worker is worker  # recycled: no new interpreter started
        out = again.run("print('x' in globals(), os.path.exists('left.txt') if 'os' in globals() else None)\n"
                        "import os\nprint(os.listdir('.'), os.path.exists('left.txt'))")
        assert out.stdout == "False None\n[] False\n", out


def _sleepers(duration: str) -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep\x00{duration}\x00"]


def test_closed_sessions_are_recycled_up_to_the_spares_plus_one():
    sb = make_sandbox("local", workers=0, light_workers=0, spare_sessions=1)
    try:
        started = len(sb._all)
        for _ in range(4):  # an env's episodes: close, then open the next
            with sb.open_session() as s:
                assert s.run("print(1)").stdout == "1\n"
        assert len(sb._all) == started + 1  # the first open started one replacement spare, then none
        a, b, c = sb.open_session(), sb.open_session(), sb.open_session()
        for s in (a, b, c):
            s.close()
        assert len(sb._spares) == 2 and len(sb._all) == 2  # idle zygotes beyond spares + 1 are retired
    finally:
        sb.close()


@pytest.mark.timeout(30)
def test_one_shot_background_process_is_killed(sandbox):
    # a duration no other process on the machine uses: a plain `sleep 300` elsewhere made this fail
    duration = f"300.{os.getpid()}{time.time_ns() % 10**6}"
    sandbox.run(f"import subprocess\nsubprocess.Popen(['sleep', '{duration}'])")
    time.sleep(0.2)
    sleepers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == f"sleep\x00{duration}\x00"]
    assert not sleepers


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.timeout(30)
def test_close_kills_all_workers():
    sb = make_sandbox("local", workers=2)
    sb.run("print(1)")
    pids = [w.proc.pid for w in sb._all]
    sb.close()
    # a forked worker is reaped by the fork server (its parent) a moment after it died
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pids and not any(os.path.exists(f"/proc/{p}") for p in pids)


@pytest.mark.timeout(30)
def test_python_tool_on_local_sandbox(sandbox):
    tool = PythonTool(sandbox, timeout_s=2)
    assert tool.call({"code": "a = 5"}) == ""
    assert tool.call({"code": "print(a * 2)"}) == "10"
    assert "TimeoutError" in tool.call({"code": "while True: pass"})
    tool.close()


@pytest.mark.timeout(60)
def test_works_with_descriptors_above_1024():
    """A trainer with ~100 environments open holds over a thousand descriptors; ``select`` fails
    on those (it did: 'filedescriptor out of range in select()' in every tool observation)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1300")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    fillers = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        sb = make_sandbox("local", workers=1)
        try:
            assert sb._all[0].proc.stdout.fileno() > 1024
            assert sb.run("print(6 * 7)").stdout.strip() == "42"
            with sb.open_session() as session:
                session.run("x = 6")
                assert session.run("print(x * 7)").stdout.strip() == "42"
        finally:
            sb.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(30)
def test_stdin(sandbox):
    code = "a, b = map(int, input().split())\nimport sys\nprint(a + b, repr(sys.stdin.read()))"
    assert sandbox.run(code, stdin="3 4\nrest\n").stdout == "7 'rest\\n'\n"
    assert sandbox.run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"  # None: empty stdin
    assert "EOFError" in sandbox.run("input()").stderr
    # fd 0 itself, so subprocesses and os.read see it too
    assert sandbox.run("import os; print(os.read(0, 100))", stdin="raw é").stdout == "b'raw \\xc3\\xa9'\n"
    result = sandbox.run("import subprocess; print(subprocess.run(['cat'], capture_output=True, text=True).stdout)",
                         stdin="through cat")
    assert result.stdout == "through cat\n"
    big = "x" * (3 << 20)
    assert sandbox.run("import sys; print(len(sys.stdin.read()))", stdin=big).stdout == f"{len(big)}\n"
    with pytest.raises(TypeError):
        sandbox.run("print(1)", stdin=b"bytes")


@pytest.mark.timeout(30)
def test_session_stdin_is_fresh_per_run(sandbox):
    with sandbox.open_session() as session:
        session.run("first = input()", stdin="one\nleft over\n")
        assert session.run("print(first, repr(input()))", stdin="two").stdout == "one 'two'\n"
        assert session.run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"


@pytest.mark.timeout(60)
def test_arun_from_asyncio(sandbox):
    import asyncio

    async def main():
        runs = [sandbox.arun(f"print({i} * int(input()))", stdin="3") for i in range(12)]
        with sandbox.open_session() as session:
            await session.arun("x = 5")
            together = await asyncio.gather(*runs, session.arun("print(x + 1)"), session.arun("print(x + 2)"))
            timed_out = await sandbox.arun("while True: pass", timeout_s=0.3)
        return together, timed_out

    together, timed_out = asyncio.run(main())
    assert [r.stdout for r in together[:12]] == [f"{3 * i}\n" for i in range(12)]
    assert {r.stdout for r in together[12:]} == {"6\n", "7\n"}
    assert timed_out.timed_out and not timed_out.sandbox_error
    assert sandbox.run("print('still fine')").stdout == "still fine\n"


@pytest.mark.timeout(30)
def test_arun_cancelled_mid_run_does_not_leak_its_reply():
    import asyncio

    sb = make_sandbox("local", workers=1, spare_sessions=0)
    try:
        async def main():
            task = asyncio.ensure_future(sb.arun("import time; time.sleep(0.5); print('late')"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await sb.arun("print('next')")

        assert asyncio.run(main()).stdout == "next\n"
    finally:
        sb.close()
