"""Enter fresh Linux namespaces and build the sandbox's filesystem view (stdlib only).

Used by ``_runner.py`` when it starts as a LocalSandbox worker. After ``enter()`` returns,
the calling code runs as PID 1 of a new PID namespace, as root of a new user namespace
(mapped to host root, so it can mount) that also maps uid/gid 65534 ("nobody", what user code
runs as), with no network (a new, empty network namespace), its own IPC and UTS namespaces,
and a private mount namespace where:

- every mount is read-only;
- ``/tmp`` and ``/dev/shm`` are fresh private tmpfs (the only writable places);
- the host's ``/root``, ``/home``, ``/run``, ``/var/tmp`` are hidden under empty tmpfs, except the
  Python installation the worker needs, which is bind-mounted back;
- ``/proc`` shows only the sandbox's own processes.

This file deliberately imports nothing outside the standard library: it is also copied into
the Docker image.
"""
from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
PR_SET_PDEATHSIG = 1

NOBODY = 65534
HIDDEN_DIRS = ("/root", "/home", "/run", "/var/tmp")
WRITABLE_TMPFS = ("/tmp", "/dev/shm")
# Mount flags the kernel locks on mounts inherited from the parent namespace: a remount from
# inside a user namespace must repeat them or it fails with EPERM.
_LOCKED_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                   "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def enter(tmpfs_mb: int = 256) -> None:
    """Move this process into new namespaces; returns in the PID-1 child, never in the caller."""
    keep = _paths_to_keep()
    _unshare_with_id_maps()
    child = os.fork()  # the first child of CLONE_NEWPID becomes PID 1 of the new namespace
    if child:
        # The outer process only waits: the host kills it to kill the whole sandbox.
        _, status = os.waitpid(child, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # outer process killed -> PID 1 dies -> namespace dies
    _build_filesystem(keep, tmpfs_mb)


def _unshare_with_id_maps() -> None:
    # Mapping two ids (root for mounting, nobody for user code) needs CAP_SETUID in the parent
    # user namespace, which this process loses on unshare: a helper forked before writes them.
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.read(ready_r, 1)
        code = 0
        try:
            target = os.getppid()
            for kind in ("uid_map", "gid_map"):
                with open(f"/proc/{target}/{kind}", "w") as f:
                    f.write(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
        except OSError as e:
            print(f"sandbox: writing id maps failed: {e}", file=sys.stderr)
            code = 1
        os._exit(code)
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    _check(_libc.unshare(flags), "unshare")
    os.write(ready_w, b"x")
    _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError("could not write the user namespace id maps")
    os.close(ready_r)
    os.close(ready_w)


def _paths_to_keep() -> list[str]:
    """The Python installation dirs that live under a directory we are about to hide."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    candidates |= {p for p in sys.path if p and os.path.isdir(p)}
    real = sorted({os.path.realpath(p) for p in candidates})
    hidden = [p for p in real if any(p == h or p.startswith(h + "/") for h in HIDDEN_DIRS + WRITABLE_TMPFS)]
    # Keep only top-most paths: site-packages is inside the prefix, one bind mount covers both.
    return [p for p in hidden if not any(p != q and p.startswith(q + "/") for q in hidden)]


def _build_filesystem(keep: list[str], tmpfs_mb: int) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # only our PID namespace
    # O_PATH handles survive covering their directory; bind-mount them back afterwards.
    handles = {path: os.open(path, os.O_PATH) for path in keep}
    for path in HIDDEN_DIRS + WRITABLE_TMPFS:
        if os.path.isdir(path):
            size = tmpfs_mb if path in WRITABLE_TMPFS else 1
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
    for path, fd in handles.items():
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    _remount_all_readonly(skip=WRITABLE_TMPFS + ("/proc",))


def _remount_all_readonly(skip: tuple[str, ...]) -> None:
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
        options = fields[5].split(",")
        if "ro" in options or any(target == s or target.startswith(s + "/") for s in skip):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= _LOCKED_OPTIONS.get(option, 0)
        mount(None, target, None, flags)
