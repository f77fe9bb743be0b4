"""The sandbox worker ("zygote"): runs inside the isolation, forks one child per snippet.

Started once per worker by ``LocalSandbox`` (``python _runner.py``: enters namespaces first, see
``_namespaces.py``) or as the entrypoint of the Docker image (``--no-isolate``: the container
is the isolation). It pre-imports common modules, then serves length-prefixed JSON requests on
its stdin/stdout:

- ``{"op": "run", "code", "timeout_s", "memory_mb", "stdin"}``: fork a child with a fresh globals
  dict, run the code once, kill everything the child left behind. ``stdin`` (a str, or None for
  an empty stdin) becomes the child's fd 0 (a memfd, so ``input()``, ``sys.stdin.read()`` and
  subprocesses all see it).
- ``{"op": "session_run", ...}``: same, but the child stays alive between requests and keeps its
  globals; if it times out, runs out of memory or exits, it is killed and the next run starts
  from a fresh state with a note saying so.
- ``{"op": "session_end"}``: kill the session's child and everything it started, remove its
  working directory; the next ``session_run`` starts a new session in a freshly forked child
  (so the host can hand this zygote to another episode, as one-shot runs share zygotes).

Children drop to uid 65534 with no capabilities and no_new_privs, get rlimits (address space,
CPU, processes, open files, file size, no core dumps), a scrubbed environment, a private working
directory under the sandbox's tmpfs ``/tmp``, and stdout/stderr on pipes read up to a cap.
The wall-clock limit is enforced here: on expiry every sandbox process is SIGKILLed.
Standard library only: this file is copied into the Docker image.
"""
from __future__ import annotations

import argparse
import builtins
import gc
import ctypes
import io
import itertools
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

NOBODY = 65534
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DEFAULT_PRELOAD = ("math", "cmath", "re", "json", "itertools", "functools", "collections", "fractions",
                   "decimal", "random", "statistics", "string", "heapq", "bisect", "datetime", "numpy", "numpy.random")
_HEADER = struct.Struct(">I")
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once in the zygote, not per child
_OWN_PID_NS: list[int] = []  # fd of the zygote's PID namespace, to return to after each fork
CLONE_NEWPID = 0x20000000


# ---------------------------------------------------------------- framing (shared with the host)
def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    buf = _HEADER.pack(len(data)) + data
    while buf:
        buf = buf[os.write(fd, buf):]


def wait_readable(fds: list, timeout_s: float | None) -> list[int]:
    """The descriptors of ``fds`` (ints or objects with ``fileno()``) that are readable, at end
    of file or in error within ``timeout_s``. ``poll``, not ``select``: select fails on
    descriptors >= 1024, which a trainer holding a hundred sandbox sessions reaches."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
    return [fd for fd, _ in poller.poll(timeout_ms)]


def read_frame(fd: int):
    """One JSON message from a blocking fd, or None at end of file."""
    header = _read_exact(fd, _HEADER.size)
    return None if header is None else json.loads(_read_exact(fd, _HEADER.unpack(header)[0]) or b"null")


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- the child (runs user code)
def child_main(cmd_fd: int, status_fd: int, max_procs: int) -> None:
    """Forked ahead of time: drop privileges, then wait for the first snippet."""
    vm_mb = _current_vm_mb()  # the pre-imported interpreter counts against RLIMIT_AS
    _drop_privileges()
    _limit(resource.RLIMIT_NPROC, max_procs)  # counts threads too; contains fork bombs
    _limit(resource.RLIMIT_NOFILE, 256)
    _limit(resource.RLIMIT_FSIZE, 64 << 20)
    _limit(resource.RLIMIT_CORE, 0)
    _reseed()
    request = read_frame(cmd_fd)
    if request is None:
        os._exit(0)
    _limit(resource.RLIMIT_AS, (vm_mb + request["memory_mb"]) << 20)  # memory_mb on top of the baseline
    persistent = request["persistent"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    while request is not None:
        # CPU seconds are cumulative over a process's life: a session child raises its soft limit
        # per run (the wall clock in the zygote is the real guard).
        cpu = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime + request["timeout_s"]) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY if persistent else cpu))
        _set_stdin(request.get("stdin"))
        status = _exec_snippet(request["code"], namespace)
        sys.stdout.flush()
        sys.stderr.flush()
        write_frame(status_fd, status)  # after flushing: the host sees all output first
        request = read_frame(cmd_fd) if persistent else None
    os._exit(0)


def _set_stdin(data: str | None) -> None:
    """Make ``data`` this process's fd 0 (or an empty stdin for None), and ``sys.stdin`` read it.

    A fresh stdin per run: in a session, what one run left unread is not seen by the next."""
    if data:
        try:
            fd = os.memfd_create("stdin", getattr(os, "MFD_CLOEXEC", 1))
        except (AttributeError, OSError):  # no memfd (old kernel, seccomp): a file in the private cwd
            fd = os.open(".stdin", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.unlink(".stdin")
        buf = memoryview(data.encode("utf-8", "surrogatepass"))
        while buf:
            buf = buf[os.write(fd, buf):]
        os.lseek(fd, 0, os.SEEK_SET)
    else:  # an empty pipe (reads give EOF): /dev/null is not openable in every container
        fd, write_end = os.pipe()
        os.close(write_end)
    os.dup2(fd, 0)  # dup2 clears close-on-exec on fd 0: subprocesses inherit it
    os.close(fd)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
                                 errors="replace", line_buffering=False)


def _drop_privileges() -> None:
    # The zygote's environment is exactly SAFE_ENV (reset in Zygote.serve): add the private dir only.
    cwd = os.getcwd()
    os.environ["HOME"] = os.environ["TMPDIR"] = cwd
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # clears all capabilities
    _LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot regain privileges
    _LIBC.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, reset by setuid: keeps /proc/self readable


def _limit(kind: int, value: int) -> None:
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


def _current_vm_mb() -> int:
    # os.open/os.read, not open(): the io stack would touch (and so copy) many of the zygote's pages.
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 256).split()[0]) * os.sysconf("SC_PAGE_SIZE") >> 20
    finally:
        os.close(fd)


def _reseed() -> None:
    # Every child is a fork of the same zygote: without this all runs see the same "random" numbers.
    import random

    random.seed()
    np_random = sys.modules.get("numpy.random")  # preloaded: importing it here would cost ~50 ms
    if np_random is not None:
        np_random.seed(int.from_bytes(os.urandom(4), "little"))


def _exec_snippet(code: str, namespace: dict) -> dict:
    try:
        exec(compile(code, "<code>", "exec"), namespace)
        return {"exit_code": 0, "oom": False}
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return {"exit_code": e.code or 0, "oom": False}
        print(e.code, file=sys.stderr)
        return {"exit_code": 1, "oom": False}
    except MemoryError:
        print("MemoryError: out of memory", file=sys.stderr)
        return {"exit_code": 1, "oom": True}
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ else None  # hide this runner's frame
        traceback.print_exception(type(e), e, tb)
        return {"exit_code": 1, "oom": False}


# ---------------------------------------------------------------- the zygote
class Zygote:
    """Serves requests one at a time, with children forked ahead of time."""

    def __init__(self, max_output: int, max_procs: int, prepared: int = 2):
        self.max_output = max_output
        self.max_procs = max_procs
        self.counter = itertools.count()
        self.nested = _nested_pid_namespaces_work()
        # With a PID namespace per child, killing a child kills exactly its processes, so
        # several children can wait ready; otherwise a kill takes everything, keep just one.
        self.pool_size = prepared if self.nested else 1
        self.pool: list[dict] = []
        self.session = None  # the child of the open session, if any
        self.reset_note = ""

    def handle(self, request: dict) -> tuple[dict, dict, bool]:
        """Run one request; returns the reply, the child, and whether to kill it afterwards."""
        if request["op"] == "session_end":  # the session's child goes now; the next session is a fresh one
            ended, self.reset_note = self.session is not None, ""
            if ended:
                self.kill(self.session)
            return {"ended": ended}, None, False
        persistent = request["op"] == "session_run"
        if persistent and self.session is None:
            self.session = self.take()
        child = self.session if persistent else self.take()
        message = {"code": request["code"], "timeout_s": request["timeout_s"], "stdin": request.get("stdin")}
        if not child["started"]:
            message.update(memory_mb=request["memory_mb"], persistent=persistent)
            child["started"] = True
        start = time.monotonic()
        write_frame(child["cmd"], message)
        result = self.collect(child, start + request["timeout_s"])
        result["duration_s"] = time.monotonic() - start
        lost = result.pop("lost")
        if persistent:
            result["stderr"] = self.reset_note + result["stderr"]
            self.reset_note = ""
            if lost:
                self.reset_note = "[note: the interpreter was restarted; variables from earlier runs are gone]\n"
                result["stderr"] += "\n[the interpreter state was reset]"
        return result, child, not persistent or lost

    def take(self) -> dict:
        child = self.pool.pop(0) if self.pool else self.spawn()
        if wait_readable([child["pidfd"]], 0):  # died while waiting (should not happen)
            self.kill(child)
            child = self.spawn()
        # Processes still exiting count against RLIMIT_NPROC: after a fork bomb, wait for them.
        live = {c["pid"] for c in self.pool} | {child["pid"]} | ({self.session["pid"]} if self.session else set())
        _reap(block=True, keep=live)
        return child

    def spawn(self) -> dict:
        workdir = f"/tmp/run-{next(self.counter)}"
        os.mkdir(workdir, 0o700)
        if os.getuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
        cmd_r, cmd_w = os.pipe()
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if self.nested:
            _check(_LIBC.unshare(CLONE_NEWPID))  # the next child is PID 1 of a namespace of its own
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()  # own process group: kill(0) or killpg cannot reach the other children
                os.chdir(workdir)
                for fd, target in ((os.open(os.devnull, os.O_RDONLY), 0), (out_w, 1), (err_w, 2),
                                   (cmd_r, 3), (status_w, 4)):
                    os.dup2(fd, target)
                os.closerange(5, 1 << 16)  # the protocol pipes and everything else stay out of reach
                child_main(3, 4, self.max_procs)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        if self.nested:
            _check(_LIBC.setns(_OWN_PID_NS[0], CLONE_NEWPID))  # back to forking into our namespace
        for fd in (cmd_r, status_w, out_w, err_w):
            os.close(fd)
        for fd in (status_r, out_r, err_r):
            os.set_blocking(fd, False)
        return {"pid": pid, "pidfd": os.pidfd_open(pid), "cmd": cmd_w, "status": status_r,
                "out": out_r, "err": err_r, "workdir": workdir, "started": False}

    def collect(self, child: dict, deadline: float) -> dict:
        out, err, status_buf = bytearray(), bytearray(), bytearray()
        truncated = [False]
        streams = {child["out"]: out, child["err"]: err}
        status, died = None, False
        while status is None and not died:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready = wait_readable([*streams, child["status"], child["pidfd"]], remaining)
            for fd in ready:
                if fd in streams:
                    self._read_capped(fd, streams, truncated)
                elif fd == child["status"]:
                    status_buf += os.read(fd, 65536)
                    status = _parse_status(status_buf)
                else:
                    died = True
        for fd in list(streams):  # output written before the status or the exit is already queued
            self._read_capped(fd, streams, truncated, drain=True)
        result = {"stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"),
                  "truncated": truncated[0], "timed_out": False, "oom": False, "lost": status is None}
        if status is not None:
            result.update(exit_code=status["exit_code"], oom=status["oom"])
            result["lost"] = status["oom"]  # a MemoryError may leave the interpreter half-broken
        elif died:
            code = os.waitstatus_to_exitcode(os.waitpid(child["pid"], 0)[1])
            child["reaped"] = True
            result.update(exit_code=code, timed_out=code == -signal.SIGXCPU)
        else:
            result.update(exit_code=-signal.SIGKILL, timed_out=True)
        return result

    def _read_capped(self, fd: int, streams: dict, truncated: list, drain: bool = False) -> None:
        while fd in streams:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                del streams[fd]  # end of file: stop selecting on it
                return
            buf = streams[fd]
            room = self.max_output - len(buf)
            if len(chunk) > room:
                truncated[0] = True
            buf += chunk[:max(room, 0)]  # keep reading past the cap so the writer never blocks
            if not drain:
                return

    def kill(self, child: dict) -> None:
        """SIGKILL a child and every process it started, then clean up after it."""
        if self.nested:
            # PID 1 of its namespace: the kernel kills all its descendants with it.
            _ignore_errors(os.kill, child["pid"], signal.SIGKILL)
            dead = [child]
        else:
            if os.getpid() == 1:
                _ignore_errors(os.kill, -1, signal.SIGKILL)  # everything in our namespace
            else:
                _kill_uid(NOBODY)
            dead = self.pool + [child] + ([self.session] if self.session else [])
            self.pool = []
        if self.session in dead:
            self.session = None
        for c in {id(c): c for c in dead}.values():
            for key in ("pidfd", "cmd", "status", "out", "err"):
                os.close(c[key])
            try:
                os.rmdir(c["workdir"])  # the common case, and much cheaper than rmtree
            except OSError:
                shutil.rmtree(c["workdir"], ignore_errors=True)
        _reap(block=False)  # the dying processes exit on another core meanwhile

    def serve(self, proto_in: int, proto_out: int) -> None:
        os.environ.clear()  # what children start from (they add HOME and TMPDIR): nothing a preload set
        os.environ.update(SAFE_ENV)
        self.fill()
        gc.freeze()  # keep the collector from touching (and so copying) the zygote's objects in children
        write_frame(proto_out, {"ready": True})
        while (request := read_frame(proto_in)) is not None:
            child = None
            try:
                reply, child, finished = self.handle(request)
            except Exception as e:  # a zygote bug must answer, not hang the host
                reply, finished = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}, True
            write_frame(proto_out, reply)
            # Cleanup and the next fork happen after replying: off the caller's critical path.
            if finished and child is not None:
                self.kill(child)
            self.fill()
        for child in self.pool + ([self.session] if self.session else []):
            self.kill(child)

    def fill(self) -> None:
        while len(self.pool) < self.pool_size:
            self.pool.append(self.spawn())


def _nested_pid_namespaces_work() -> bool:
    try:
        _OWN_PID_NS.append(os.open("/proc/self/ns/pid", os.O_RDONLY))
        _check(_LIBC.unshare(CLONE_NEWPID))
        _check(_LIBC.setns(_OWN_PID_NS[0], CLONE_NEWPID))
        return True
    except OSError:
        return False


def _check(ret: int) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _parse_status(buf: bytearray) -> dict | None:
    if len(buf) < _HEADER.size or len(buf) < _HEADER.size + _HEADER.unpack(buf[:_HEADER.size])[0]:
        return None
    try:
        status = json.loads(buf[_HEADER.size:])
        return {"exit_code": int(status["exit_code"]), "oom": bool(status["oom"])}
    except (ValueError, KeyError, TypeError):  # user code can write to the status pipe too
        return {"exit_code": 1, "oom": False}


def _ignore_errors(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def _kill_uid(uid: int) -> None:
    # Fallback when not PID 1 of a namespace (e.g. ``docker exec``): kill by owner.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def _reap(block: bool, keep: set[int] = frozenset()) -> None:
    """Collect exited processes (as PID 1, every orphan of the sandbox is our child).

    Exiting and zombie processes still count against RLIMIT_NPROC, so before a run we wait
    until at most a couple of them (the previous child, still tearing down its address space
    on another core) are left besides the prepared child ``keep``: after a fork bomb that is
    the difference between a working and a failing ``fork()``.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not block or _few_left(keep):
                return
            time.sleep(0.0002)


def _few_left(keep: set[int]) -> bool:
    if os.getpid() != 1:
        return True  # orphans are not ours to wait for outside a PID namespace
    others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != 1 and int(p) not in keep]
    return len(others) <= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-isolate", action="store_true", help="skip namespaces (inside a container)")
    parser.add_argument("--max-output", type=int, default=65536, help="bytes kept per stream")
    parser.add_argument("--max-procs", type=int, default=16, help="RLIMIT_NPROC of user code")
    parser.add_argument("--tmpfs-mb", type=int, default=256)
    parser.add_argument("--prepared", type=int, default=2, help="children forked ahead of the next request")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    args = parser.parse_args(argv)
    # Keep the protocol off fds 0/1 so nothing printed by accident corrupts it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.environ.clear()
    os.environ.update(SAFE_ENV)  # before numpy loads: one BLAS thread, and no host secrets
    try:
        if not args.no_isolate:
            import _namespaces

            _namespaces.enter(args.tmpfs_mb)
        os.chdir("/tmp")
        for name in filter(None, args.preload.split(",")):
            try:
                __import__(name)
            except ImportError:
                pass
        Zygote(args.max_output, args.max_procs, max(1, args.prepared)).serve(proto_in, proto_out)
    except Exception as e:
        write_frame(proto_out, {"error": f"sandbox worker failed to start: {type(e).__name__}: {e}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
