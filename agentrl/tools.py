"""The Tool seam: a name, a description, a JSON schema, and ``call(arguments) -> str``.

A tool's own failure (bad arguments, code that raises, a search that times out) is returned
as text for the model to read; only ``ToolError`` subclasses signal infrastructure trouble.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class ToolError(Exception):
    """Infrastructure failure behind a tool (sandbox down, retrieval server unreachable)."""


@runtime_checkable
class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of ``arguments``."""

    def call(self, arguments: dict[str, Any]) -> str: ...


class EpisodeTool(Tool, Protocol):
    """A tool with per-episode state (an interpreter session): opened at reset, closed at the end."""

    def reset(self) -> None: ...

    def close(self) -> None: ...


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The OpenAI / Hermes function schema, as chat templates with tools expect it."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


class DisabledTool:
    """Stands in for a tool (a class or an instance) with its name and schema, so the prompt does
    not change; every call answers ``message``. The control in which a tool cannot help."""

    def __init__(self, tool, message: str | None = None):
        self.name, self.description, self.parameters = tool.name, tool.description, tool.parameters
        self.message = message or f"Error: the {self.name} tool is disabled in this environment"

    def call(self, arguments: dict[str, Any]) -> str:
        return self.message


def session_sandbox(kind: str):
    """A sandbox for tools that run code in per-episode sessions only. A trainer holds one env per
    episode of a step (64 in the CPU learning run), so a local one starts no one-shot worker
    pool and keeps no spare: its one session worker starts with the first episode and, recycled
    when the episode ends, serves the next (64 envs x a pool, or x a spare beside the reused
    worker, was gigabytes of idle interpreters with numpy imported). Its worker is a fork of the
    process's fork server and forks one child ahead (the next episode's), not two."""
    from agentrl.sandbox import make_sandbox

    local = {"workers": 0, "light_workers": 0, "spare_sessions": 0, "prepared_children": 1}
    return make_sandbox(kind, **(local if kind == "local" else {}))


class PythonTool:
    """Runs code in a sandbox session whose variables persist across calls within an episode."""

    name = "python"
    description = "Execute Python code and return what it prints (stdout, then stderr)."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source to run."}},
        "required": ["code"],
    }

    def __init__(self, sandbox, timeout_s: float = 5.0, memory_mb: int = 512, max_output_chars: int = 2000):
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_output_chars = max_output_chars
        self._session = None

    def reset(self) -> None:
        self.close()
        self._session = self.sandbox.open_session(memory_mb=self.memory_mb)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def call(self, arguments: dict[str, Any]) -> str:
        code = arguments.get("code")
        if not isinstance(code, str):
            return "Error: the python tool needs a string argument 'code'."
        if self._session is None:
            self.reset()
        result = self._session.run(code, timeout_s=self.timeout_s)
        return format_exec_result(result, self.max_output_chars)


def format_exec_result(result, max_chars: int) -> str:
    """What the model reads back from an execution: output first, then why it failed."""
    text = result.stdout
    if result.stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + result.stderr
    if result.timed_out:
        text += "\nTimeoutError: execution exceeded the time limit"
    elif result.oom:
        text += "\nMemoryError: execution exceeded the memory limit"
    text = text.strip("\n")
    if len(text) > max_chars:
        text = text[:max_chars] + "\n...[output truncated]"
    if result.truncated and not text.endswith("[output truncated]"):
        text += "\n...[output truncated]"
    return text
