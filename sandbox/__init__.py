"""Code execution for agentrl: ``make_sandbox("local" | "docker" | "remote", **options)``."""
from agentrl.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxSession

__all__ = ["ExecResult", "Sandbox", "SandboxError", "SandboxSession", "make_sandbox"]


def make_sandbox(kind: str = "local", **options) -> Sandbox:
    if kind == "local":
        from agentrl.sandbox.local import LocalSandbox

        return LocalSandbox(**options)
    if kind == "docker":
        from agentrl.sandbox.docker import DockerSandbox

        return DockerSandbox(**options)
    if kind == "remote":
        from agentrl.sandbox.remote import RemoteSandbox

        return RemoteSandbox(**options)
    raise ValueError(f"unknown sandbox kind {kind!r}; choose local, docker or remote")
