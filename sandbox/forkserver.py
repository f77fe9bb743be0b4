"""Sandbox workers forked from one pre-initialised interpreter instead of each exec'ing Python.

A LocalSandbox worker is a Python interpreter with numpy & co imported: about 35 MB of private
memory and 0.2 s to start. A trainer holds one session worker per env (16 to 64 of them), so
started one by one they cost hundreds of MB of identical pages. Here one *fork server* per host
process and preload (this file run as a script) imports the preload once; every worker is a
fork of it that then runs ``_runner.main`` -- enters fresh namespaces, builds its filesystem
view, serves the host -- exactly as an exec'ed worker does. The imported modules' pages stay
shared copy-on-write among all workers (``gc.freeze`` keeps the collector from copying them),
and a worker starts in milliseconds.

Nothing about isolation changes: each worker still has its own user, PID, mount, network, IPC
and UTS namespaces, its own tmpfs ``/tmp`` and its own ``/proc``. The preload is imported
outside the namespaces, in a process as trusted as the host (it runs no user code, and talks
only to the host, over a private socket pair).

Protocol (``SOCK_SEQPACKET``: one message, one datagram): the host sends ``{"argv": [...]}`` with
three descriptors (the worker's stdin, stdout, stderr); the server forks, and answers
``{"pid": pid}`` with a pidfd of the new worker (an exact handle: the host is not the worker's
parent, so it cannot wait for it, and a pid alone could be reused). The host's end closing (the
host exiting) ends the server; each worker ends when its own stdin closes, as before.

Host side: :func:`spawn` (one server per interpreter + preload, started on first use, restarted
if it died) returning a :class:`ForkedProcess`, the part of ``subprocess.Popen`` that
``LocalSandbox`` uses. Standard library only.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading

SCRIPT = os.path.abspath(__file__)
_MAX_MESSAGE = 1 << 16


class ForkServerError(OSError):
    pass


# ---------------------------------------------------------------- host side
class ForkedProcess:
    """A worker forked by the fork server: ``stdin``/``stdout`` pipes (binary, unbuffered),
    ``pid``, ``poll()``, ``kill()``, ``wait()``. Not our child: its exit code is unknown, so
    ``poll()`` gives ``-SIGKILL`` after :meth:`kill` and ``-1`` ("exited") otherwise."""

    def __init__(self, pid: int, pidfd: int, stdin_fd: int, stdout_fd: int):
        self.pid, self._pidfd = pid, pidfd
        self.stdin = os.fdopen(stdin_fd, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_fd, "rb", buffering=0)
        self.returncode: int | None = None
        self._killed = False

    def poll(self) -> int | None:
        if self.returncode is None and self._pidfd >= 0 and _readable(self._pidfd, 0):
            self._exited()
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            self._killed = True
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            if not _readable(self._pidfd, timeout):
                raise subprocess.TimeoutExpired(f"sandbox worker {self.pid}", timeout)
            self._exited()
        return self.returncode

    def _exited(self) -> None:
        self.returncode = -signal.SIGKILL if self._killed else -1
        os.close(self._pidfd)
        self._pidfd = -1

    def __del__(self):
        if getattr(self, "_pidfd", -1) >= 0:
            os.close(self._pidfd)


def _readable(fd: int, timeout_s: float | None) -> bool:
    """``poll``, not ``select`` (which fails on descriptors >= 1024: a trainer holds hundreds)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout_s is None else int(timeout_s * 1000)))


class ForkServer:
    """One server process, started with ``python forkserver.py --preload=...``."""

    def __init__(self, python: str, preload_arg: str, startup_timeout_s: float = 60.0):
        from agentrl.sandbox._runner import SAFE_ENV

        host, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.owner = os.getpid()
        self._lock = threading.Lock()
        try:
            self.proc = subprocess.Popen([python, SCRIPT, preload_arg], stdin=server.fileno(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=dict(SAFE_ENV), cwd="/", close_fds=True,
                                         start_new_session=True)
        finally:
            server.close()
        self._sock = host
        self._sock.settimeout(startup_timeout_s)
        try:
            ready = self._receive()[0]
        except (OSError, ValueError) as e:
            self.close()
            raise ForkServerError(f"the sandbox fork server did not start: {e}") from e
        if not ready.get("ready"):
            self.close()
            raise ForkServerError(f"the sandbox fork server did not start: {ready.get('error')}")
        self._sock.settimeout(10.0)

    def alive(self) -> bool:
        return self.proc.poll() is None and os.getpid() == self.owner

    def spawn(self, argv: list[str], stderr_fd: int) -> ForkedProcess:
        """A new worker running ``_runner.main(argv)``, its stderr on ``stderr_fd``."""
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._sock, [json.dumps({"argv": argv}).encode()], [in_r, out_w, stderr_fd])
                reply, fds = self._receive()
        except BaseException:
            for fd in (in_w, out_r):
                os.close(fd)
            raise
        finally:
            os.close(in_r)  # the worker has its own copies now
            os.close(out_w)
        if "pid" not in reply or len(fds) != 1:
            for fd in (in_w, out_r, *fds):
                os.close(fd)
            raise ForkServerError(f"the sandbox fork server could not fork: {reply.get('error', reply)}")
        return ForkedProcess(reply["pid"], fds[0], in_w, out_r)

    def _receive(self) -> tuple[dict, list[int]]:
        data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 1)
        if not data:
            for fd in fds:
                os.close(fd)
            raise ForkServerError(f"the sandbox fork server exited (code {self.proc.poll()})")
        return json.loads(data), fds

    def close(self) -> None:
        self._sock.close()  # EOF: the server exits; the workers it forked live on until their stdin closes
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_servers: dict[tuple[str, str], ForkServer] = {}
_servers_lock = threading.Lock()


def spawn(python: str, argv: list[str], preload_arg: str, stderr_fd: int) -> ForkedProcess:
    """A worker (``_runner.py`` with ``argv``) forked from this process's server for ``python`` and
    ``preload_arg`` (``--preload=...``), which is started on first use and restarted if it died."""
    server = _live_server(python, preload_arg)
    try:
        return server.spawn(argv, stderr_fd)
    except (OSError, ValueError):  # it died under us: one fresh server, one more try
        return _live_server(python, preload_arg, dead=server).spawn(argv, stderr_fd)


def _live_server(python: str, preload_arg: str, dead: ForkServer | None = None) -> ForkServer:
    """This process's server for ``(python, preload_arg)``, started anew if there is none, it
    died, it belongs to the process this one was forked from, or it is ``dead``."""
    key = (python, preload_arg)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server is dead or not server.alive():
            if server is not None and os.getpid() == server.owner:
                server.close()
            server = _servers[key] = ForkServer(python, preload_arg)
        return server


# ---------------------------------------------------------------- server side (this file run as a script)
def serve(preload: str) -> int:
    import gc

    import _runner  # this file's directory is sys.path[0]

    control = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        for name in filter(None, preload.split(",")):
            try:
                __import__(name)
            except ImportError:
                pass
    except Exception as e:
        control.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        return 1
    gc.freeze()  # the workers fork from here: keep the collector from touching (copying) these pages
    signal.signal(signal.SIGCHLD, lambda *_: _runner._reap(block=False))  # a killed worker is gone at once
    control.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 3)
        except OSError:
            return 0
        if not data:  # the host is gone
            return 0
        try:
            argv = json.loads(data)["argv"]
            if len(fds) != 3:
                raise ValueError(f"expected 3 descriptors, got {len(fds)}")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # no reaping before the pidfd is open
            try:
                pid = os.fork()
                if pid == 0:
                    _worker(fds, argv, _runner)
                pidfd = os.pidfd_open(pid)  # the child cannot have been reaped yet: the handle is exact
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
            os.close(pidfd)
        except Exception as e:  # a bad request answers, it does not end the server
            control.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _worker(fds: list[int], argv: list[str], runner) -> None:
    """In the forked child: become an exec'ed worker would be (fds 0-2, nothing else, own session)."""
    code = 70
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the runner waits for its own children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd, target in zip(fds, (0, 1, 2)):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)
        os.setsid()
        code = runner.main(argv)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code if isinstance(code, int) else 70)



if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.exit(serve(arg.removeprefix("--preload=")))
