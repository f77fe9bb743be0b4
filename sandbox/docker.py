"""DockerSandbox: the same zygote worker as LocalSandbox, but each worker is a Docker container.

Each worker is one container of ``agentrl-sandbox:latest`` (built locally by
``sandbox/docker_setup.sh``, no registry needed) running ``_runner.py --no-isolate`` as its PID
1: network disabled, read-only root filesystem with a tmpfs ``/tmp``, memory, pids and CPU
limits, all capabilities dropped except what dropping to uid 65534 needs, no-new-privileges.
Inside, user code gets the same per-run child, rlimits, wall-clock kill and output cap as
LocalSandbox. The host talks to the runner over the container's attached stdin/stdout.
One-shot runs share a pool of containers; each session gets a container of its own.

Protects against the same things as LocalSandbox plus the container boundary (seccomp,
cgroup memory limit for the sum of all processes). Does NOT protect against kernel exploits
or a compromised Docker daemon; the host needs access to the Docker socket (which is root).
"""
from __future__ import annotations

import json
import struct
import time

from agentrl.sandbox._runner import wait_readable
from agentrl.sandbox.base import SandboxError
from agentrl.sandbox.local import STARTUP_TIMEOUT_S, LocalSandbox, WorkerDied

IMAGE = "agentrl-sandbox:latest"
RUNNER_IN_IMAGE = "/opt/agentrl/_runner.py"


def docker_client():
    """A connected docker client, or SandboxError saying why there is none."""
    try:
        import docker
    except ImportError as e:
        raise SandboxError("DockerSandbox needs the docker SDK: pip install 'docker>=7'") from e
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as e:  # the SDK raises DockerException, requests and OS errors
        raise SandboxError(f"no Docker engine reachable ({e}); run sandbox/docker_setup.sh") from e
    return client


class _DockerWorker:
    """One container running the zygote; speaks the same framing over the attach socket."""

    def __init__(self, client, image: str, argv: list[str], limits: dict):
        self.container = client.containers.create(
            image, command=["python3", RUNNER_IN_IMAGE, "--no-isolate", *argv], stdin_open=True,
            network_disabled=True, read_only=True, tmpfs={"/tmp": "size=256m,mode=1777", "/dev/shm": "size=64m"},
            cap_drop=["ALL"], cap_add=["SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE", "FOWNER"],
            security_opt=["no-new-privileges"], labels={"agentrl.sandbox": "1"}, **limits)
        # Attach before starting so the "ready" frame is not lost.
        self._sock = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})._sock
        self.container.start()
        self._buf = bytearray()  # demultiplexed stdout not consumed yet
        self.ready = False

    def request(self, message: dict, timeout_s: float) -> dict:
        if not self.ready:
            if not self._read(STARTUP_TIMEOUT_S).get("ready"):
                raise SandboxError("sandbox container failed to start")
            self.ready = True
        data = json.dumps(message).encode()
        try:
            self._sock.sendall(struct.pack(">I", len(data)) + data)
        except OSError as e:
            raise WorkerDied(f"cannot write to the sandbox container: {e}") from e
        reply = self._read(timeout_s)
        if "error" in reply:
            raise WorkerDied(reply["error"])
        return reply

    def _read(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        size = struct.unpack(">I", self._stdout_bytes(4, deadline))[0]
        return json.loads(self._stdout_bytes(size, deadline))

    def _stdout_bytes(self, n: int, deadline: float) -> bytes:
        # Docker multiplexes the streams: 8-byte header (stream id, 3 zero bytes, length) per chunk.
        while len(self._buf) < n:
            header = self._recv_exact(8, deadline)
            payload = self._recv_exact(struct.unpack(">I", header[4:])[0], deadline)
            if header[0] == 1:
                self._buf += payload
        data, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return data

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            if not wait_readable([self._sock], max(deadline - time.monotonic(), 0)):
                raise WorkerDied("no answer from the sandbox container in time")
            chunk = self._sock.recv(n - len(chunks))
            if not chunk:
                raise WorkerDied("the sandbox container exited")
            chunks += chunk
        return bytes(chunks)

    def kill(self) -> None:
        try:
            self._sock.close()
            self.container.remove(force=True)
        except Exception:  # already gone: nothing to free
            pass


class DockerSandbox(LocalSandbox):
    """LocalSandbox's worker pool, with containers as workers."""

    # the container is the isolation (its zygote runs --no-isolate): a session's container is
    # removed when it closes, never handed to the next session
    recycle_sessions = False

    def __init__(self, image: str = IMAGE, workers: int = 1, container_memory_mb: int = 2048, pids: int = 128,
                 cpus: float = 1.0, max_output_bytes: int = 65536, max_procs: int = 16, spare_sessions: int = 0):
        self._client = docker_client()
        try:
            self._client.images.get(image)
        except Exception as e:
            raise SandboxError(f"image {image} not found ({e}); build it with sandbox/docker_setup.sh") from e
        self._image = image
        self._argv = [f"--max-output={max_output_bytes}", f"--max-procs={max_procs}"]
        self._limits = {"mem_limit": f"{container_memory_mb}m", "memswap_limit": f"{container_memory_mb}m",
                        "pids_limit": pids, "nano_cpus": int(cpus * 1e9)}
        self._init_pool(workers, spare_sessions)

    def _new_worker(self) -> _DockerWorker:
        return _DockerWorker(self._client, self._image, self._argv, self._limits)

