"""Tools from plain Python functions: the JSON schema comes from type hints and the docstring.

``tool_from_function(fn)`` derives the schema with ``transformers.utils.get_json_schema``, the
function TRL's ``GRPOTrainer(tools=[...])`` relies on (the chat template converts each callable
with it), so a function written for TRL gives the model the same tool description here::

    def multiply(a: int, b: int) -> int:
        \"\"\"Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        \"\"\"
        return a * b

    tool = tool_from_function(multiply)   # tool.parameters == get_json_schema(multiply)["function"]["parameters"]

Calls pass the arguments as keyword arguments and return ``str(result)`` (``None`` -> ``""``);
a raised exception becomes an ``Error: ...`` text for the model to read. Argument validation
against the schema is the environment's job (``ToolEnv``), not the tool's.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import sys
import threading
from typing import Any, Callable

from transformers.utils import chat_template_utils
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException, get_json_schema

DOCSTRING_EXAMPLE = '''    """What the tool does, in one line.

    Args:
        query: What this argument means.
    """'''


class ToolDefinitionError(ValueError):
    """A function cannot become a tool (no docstring, an argument without a type hint or a description)."""


class _BackgroundLoop:
    """One event loop in a daemon thread, shared by every async tool of the process.

    Tools are called from the collector's worker threads, some of which may already run a loop,
    so ``asyncio.run`` per call is not an option; and async clients (aiohttp sessions, verl tools
    holding locks or semaphores) must keep living on one loop between calls, as TRL's trainer
    keeps its ``async_loop`` for async tools.
    """

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # a forked child (AsyncVectorEnv workers) inherits the loop but not the thread running it
            if self._loop is None or self._loop.is_closed() or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="agentrl-async-tools", daemon=True).start()
            return self._loop

    def run(self, coroutine, timeout_s: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop())
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the tool did not answer within {timeout_s} s") from None


_background = _BackgroundLoop()


def run_coroutine(coroutine, timeout_s: float | None = None) -> Any:
    """Run ``coroutine`` on the shared background loop and wait for its result (from any thread)."""
    return _background.run(coroutine, timeout_s)


_patch_lock = threading.Lock()


def _json_schema_without_torch(fn: Callable) -> dict[str, Any]:
    """``get_json_schema(fn)``, without importing torch when it is not loaded yet.

    transformers imports torch (1.5 s, hundreds of MB) on every call only to map ``torch.Tensor``
    hints to an "audio" type, which text tools never take, and environments must stay torch-free.
    With torch loaded (a trainer process) the call is unchanged; without it a Tensor hint is refused.
    """
    if "torch" in sys.modules:
        return get_json_schema(fn)
    with _patch_lock:  # chat_template_utils reads is_torch_available from its own globals, nowhere else
        saved = chat_template_utils.is_torch_available
        chat_template_utils.is_torch_available = lambda: False
        try:
            return get_json_schema(fn)
        finally:
            chat_template_utils.is_torch_available = saved


def function_schema(fn: Callable) -> dict[str, Any]:
    """``get_json_schema(fn)`` with errors that say what to add to the function."""
    fn_name = getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise ToolDefinitionError(f"a tool must be a Python function or method, got {type(fn).__name__} {fn!r}")
    if not inspect.getdoc(fn):
        raise ToolDefinitionError(
            f"function {fn_name!r} has no docstring: add a Google-style docstring that describes the tool and "
            f"each argument, e.g.\n{DOCSTRING_EXAMPLE}")
    try:
        return _json_schema_without_torch(fn)
    except TypeHintParsingException as e:
        raise ToolDefinitionError(
            f"function {fn_name!r}: {e}. Give every argument a JSON-compatible type hint "
            f"(str, int, float, bool, list[...], dict[str, ...], Literal[...], X | None)") from e
    except DocstringParsingException as e:
        raise ToolDefinitionError(
            f"function {fn_name!r}: {e}. Describe every argument under 'Args:' in the docstring, e.g.\n"
            f"{DOCSTRING_EXAMPLE}") from e
    except NameError as e:  # a string annotation naming something that is not defined
        raise ToolDefinitionError(f"function {fn_name!r}: a type hint cannot be resolved ({e})") from e


class FunctionTool:
    """A ``Tool`` (see ``agentrl.tools``) that calls a Python function, sync or async."""

    def __init__(self, fn: Callable, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None):
        schema = function_schema(fn)["function"]
        self.fn = fn
        self.name = name or schema["name"]
        self.description = description if description is not None else (schema.get("description") or "")
        self.parameters: dict[str, Any] = schema["parameters"]
        self.timeout_s = timeout_s
        """Wall-clock limit for an async function's call (a sync function cannot be interrupted)."""
        self.is_async = inspect.iscoroutinefunction(fn)

    def call(self, arguments: dict[str, Any]) -> str:
        if not isinstance(arguments, dict):
            return f"Error: the arguments of {self.name!r} must be a JSON object, got {type(arguments).__name__}"
        try:
            result = self.fn(**arguments)
            if inspect.iscoroutine(result):
                result = run_coroutine(result, self.timeout_s)
        except Exception as e:  # the model reads what went wrong and can try again
            return f"Error: {type(e).__name__}: {e}"
        return "" if result is None else str(result)

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"


def tool_from_function(fn: Callable, name: str | None = None, description: str | None = None,
                       timeout_s: float | None = None) -> FunctionTool:
    """A tool whose name, description and JSON schema come from ``fn``'s signature and docstring."""
    return FunctionTool(fn, name=name, description=description, timeout_s=timeout_s)
