"""The sandbox seam: run untrusted code, get an ``ExecResult``; never hang or harm the host.

Backends: ``LocalSandbox`` (namespaces + rlimits, pre-started workers), ``DockerSandbox``
(a container per sandbox through the docker SDK) and ``RemoteSandbox`` (HTTP client of
``agentrl serve sandbox``). Nothing here imports torch.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, fields


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool = False
    oom: bool = False
    duration_s: float = 0.0
    truncated: bool = False
    """True when stdout or stderr was cut at the output cap."""
    sandbox_error: bool = False
    """True when the sandbox failed, not the code (its worker died or hung and was replaced)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExecResult":
        """From ``to_dict()`` output, ignoring fields this version does not know (a newer server)."""
        return cls(**{k: v for k, v in data.items() if k in _EXEC_FIELDS})


_EXEC_FIELDS = frozenset(f.name for f in fields(ExecResult))


class SandboxError(Exception):
    """The sandbox itself failed (not the user's code): worker died, server unreachable."""


class SandboxSession(abc.ABC):
    """An interpreter whose globals persist across ``run`` calls (one per episode)."""

    @abc.abstractmethod
    def run(self, code: str, timeout_s: float = 5.0, stdin: str | None = None) -> ExecResult:
        """Run ``code`` in the session's interpreter; ``stdin`` (None: empty) is its standard input."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Sandbox(abc.ABC):
    @abc.abstractmethod
    def run(self, code: str, timeout_s: float = 5.0, memory_mb: int = 512, stdin: str | None = None) -> ExecResult:
        """Run ``code`` in a fresh interpreter state; ``stdin`` (None: empty) is its standard input."""

    @abc.abstractmethod
    def open_session(self, memory_mb: int = 512) -> SandboxSession: ...

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
