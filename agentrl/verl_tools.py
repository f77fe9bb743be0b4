"""Tools from a verl-style tool config, so tools written for verl run in agentrl unchanged.

verl's multi-turn rollout reads a YAML file (``actor_rollout_ref.rollout.multi_turn.tool_config_path``)::

    tools:
      - class_name: "verl.tools.gsm8k_tool.Gsm8kTool"
        config: {type: native}
        tool_schema:
          type: function
          function: {name: calc_gsm8k_reward, description: ..., parameters: {type: object, properties: {...}, required: [...]}}

and, like verl's ``initialize_tools_from_config``, ``load_tool_config(path)`` imports each
``class_name`` and builds it with ``(config=..., tool_schema=...)``, the schema validated into the
pydantic model the class's constructor declares (verl's ``OpenAIFunctionToolSchema``). A verl
``BaseTool`` (async ``create`` / ``execute`` / ``release``) is wrapped in ``VerlTool``; an
agentrl-native class (anything satisfying ``agentrl.tools.Tool``) is built with ``config`` as
keyword arguments, and a plain function becomes a ``FunctionTool``. In those two cases a
``tool_schema`` in the YAML overrides the tool's own name, description and parameters.

Only ``type: native`` tools are supported (verl's MCP tools need its MCP client manager), and the
YAML is read with PyYAML: OmegaConf interpolations (``${...}``) are not resolved.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import typing
import uuid
from pathlib import Path
from typing import Any

import yaml

from agentrl.function_tools import run_coroutine, tool_from_function
from agentrl.tools import Tool

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 120.0


class ToolConfigError(ValueError):
    """The tool config cannot be loaded: the message names the entry and what to change."""


class VerlTool:
    """A verl ``BaseTool`` as an agentrl ``EpisodeTool``: one tool instance per episode.

    ``reset`` releases the previous episode's instance; the first call of the episode creates a
    fresh one (``create(create_kwargs=...)``, as verl's tool agent loop calls it), so an
    environment can set ``create_kwargs`` from its task (verl's per-row ``tools_kwargs``) in
    ``build_prompt``, which runs after the tools' ``reset``. ``close`` releases the instance.
    The tool's step reward and metrics of the last call are ``last_reward`` / ``last_metrics``;
    ``episode_reward`` sums the rewards of the episode (for an env's ``turn_reward`` or ``score``).
    """

    def __init__(self, tool: Any, create_kwargs: dict | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S):
        self.tool = tool
        function = _schema_as_dict(tool)["function"]
        self.name: str = function["name"]
        self.description: str = function.get("description") or ""
        self.parameters: dict[str, Any] = function.get("parameters") or {"type": "object", "properties": {}}
        self.create_kwargs = dict(create_kwargs or {})
        self.timeout_s = timeout_s
        self.instance_id: str | None = None
        self.last_reward, self.last_metrics, self.episode_reward = 0.0, {}, 0.0

    def reset(self) -> None:
        self.close()
        self.last_reward, self.last_metrics, self.episode_reward = 0.0, {}, 0.0

    def call(self, arguments: dict[str, Any]) -> str:
        try:
            if self.instance_id is None:
                created = run_coroutine(self.tool.create(uuid.uuid4().hex, create_kwargs=self.create_kwargs), self.timeout_s)
                # verl >= 0.4.1 returns (instance_id, ToolResponse); earlier releases the id alone
                self.instance_id = created[0] if isinstance(created, tuple) else created
            result = run_coroutine(self.tool.execute(self.instance_id, arguments), self.timeout_s)
        except Exception as e:  # what verl's agent loop does too: the model reads the error
            return f"Error: {type(e).__name__}: {e}"
        response, reward, metrics = result if isinstance(result, tuple) and len(result) == 3 else (result, 0.0, {})
        self.last_reward, self.last_metrics = float(reward or 0.0), dict(metrics or {})
        self.episode_reward += self.last_reward
        return _response_text(response)

    def close(self) -> None:
        if self.instance_id is None:
            return
        instance_id, self.instance_id = self.instance_id, None
        try:
            run_coroutine(self.tool.release(instance_id), self.timeout_s)
        except Exception as e:  # closing must not fail an episode that already ended
            log.warning("releasing verl tool %r instance %s failed: %s", self.name, instance_id, e)

    def __repr__(self) -> str:
        return f"VerlTool({self.name!r}, {type(self.tool).__name__})"


def _response_text(response: Any) -> str:
    """verl returns a ``ToolResponse`` (text, image, video) or, before 0.5, a str."""
    if response is None or isinstance(response, str):
        return response or ""
    text = getattr(response, "text", None)
    if text:
        return str(text)
    if getattr(response, "image", None) or getattr(response, "video", None):
        return "(the tool returned images or video, which a text environment does not show)"
    return "" if hasattr(response, "text") else str(response)


def _schema_as_dict(tool: Any) -> dict[str, Any]:
    schema = getattr(tool, "tool_schema", None) or tool.get_openai_tool_schema()
    if hasattr(schema, "model_dump"):  # verl's pydantic OpenAIFunctionToolSchema
        schema = schema.model_dump(exclude_none=True)
    if not isinstance(schema, dict) or not isinstance(schema.get("function"), dict) or "name" not in schema["function"]:
        raise ToolConfigError(f"{type(tool).__name__} has no usable tool schema (need {{'function': {{'name': ...}}}}), got {schema!r}")
    return schema


def is_verl_tool_class(obj: Any) -> bool:
    """verl's BaseTool contract: a class with async ``create`` and ``execute``."""
    return inspect.isclass(obj) and all(inspect.iscoroutinefunction(getattr(obj, m, None)) for m in ("create", "execute"))


def _schema_model(cls: type) -> Any:
    """The pydantic model the constructor's ``tool_schema`` argument is annotated with, if any."""
    try:
        hint = typing.get_type_hints(cls.__init__).get("tool_schema")
    except Exception:
        hint = None
    for candidate in (hint, *typing.get_args(hint)):  # Optional[OpenAIFunctionToolSchema] too
        if hasattr(candidate, "model_validate"):
            return candidate
    try:
        from verl.tools.schemas import OpenAIFunctionToolSchema

        return OpenAIFunctionToolSchema
    except ImportError:
        return None


def import_object(dotted: str, where: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ToolConfigError(f"{where}: class_name must be a dotted path 'package.module.Class', got {dotted!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ToolConfigError(f"{where}: cannot import module {module_name!r} for class_name {dotted!r} ({e}); "
                              f"install the package that provides it or put it on PYTHONPATH") from e
    if not hasattr(module, attr):
        raise ToolConfigError(f"{where}: module {module_name!r} has no attribute {attr!r} (class_name {dotted!r})")
    return getattr(module, attr)


def _override_schema(tool: Any, function: dict) -> Any:
    if "name" in function:
        tool.name = function["name"]
    if "description" in function:
        tool.description = function["description"]
    if "parameters" in function:
        tool.parameters = function["parameters"]
    return tool


def tool_from_config(entry: Any, where: str = "tool config", timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Tool:
    """One entry of a verl tool config's ``tools:`` list as an agentrl tool."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ToolConfigError(f"{where}: each tool needs a 'class_name' string (e.g. 'verl.tools.gsm8k_tool.Gsm8kTool'), got {entry!r}")
    config = entry.get("config") or {}
    schema = entry.get("tool_schema")
    if not isinstance(config, dict):
        raise ToolConfigError(f"{where}: 'config' must be a mapping, got {type(config).__name__}")
    if config.get("type", "native") != "native":
        raise ToolConfigError(f"{where}: config.type {config.get('type')!r} is not supported; only 'native' tools "
                              f"load here (verl's MCP tools need its MCP client manager)")
    if schema is not None and not (isinstance(schema, dict) and isinstance(schema.get("function"), dict)):
        raise ToolConfigError(f"{where}: tool_schema must be {{type: function, function: {{name, description, parameters}}}}, got {schema!r}")
    target = import_object(entry["class_name"], where)
    function = (schema or {}).get("function", {})

    if is_verl_tool_class(target):
        model = _schema_model(target)
        try:
            validated = model.model_validate(schema) if schema is not None and model is not None else schema
            return VerlTool(target(config=config, tool_schema=validated), timeout_s=timeout_s)
        except ToolConfigError:
            raise
        except Exception as e:  # a pydantic ValidationError or the tool's own constructor
            hint = ("; the entry has no tool_schema: add one (type: function, function: {name, description, "
                    "parameters}) or give the class a get_openai_tool_schema()") if schema is None else ""
            raise ToolConfigError(f"{where}: building {entry['class_name']} failed: {type(e).__name__}: {e}{hint}") from e
    if inspect.isfunction(target):
        return tool_from_function(target, name=function.get("name"), description=function.get("description"))
    if not inspect.isclass(target):
        raise ToolConfigError(f"{where}: {entry['class_name']!r} is a {type(target).__name__}, not a tool class or function")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        tool = target(**kwargs)
    except Exception as e:
        raise ToolConfigError(f"{where}: {entry['class_name']}(**config) failed: {type(e).__name__}: {e}") from e
    if not isinstance(tool, Tool):
        raise ToolConfigError(f"{where}: {entry['class_name']} is neither an agentrl Tool (name, description, parameters, "
                              f"call(arguments) -> str) nor a verl BaseTool (async create / execute / release)")
    return _override_schema(tool, function)


def load_tool_config(path: str | Path, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[Tool]:
    """Every tool of a verl-style YAML tool config, in order; tool names must be unique."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ToolConfigError(f"cannot read tool config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ToolConfigError(f"tool config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("tools"), list):
        raise ToolConfigError(f"tool config {path} must be a mapping with a 'tools:' list, as verl's tool configs are")
    tools = [tool_from_config(entry, f"{path}: tools[{i}]", timeout_s) for i, entry in enumerate(data["tools"])]
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolConfigError(f"tool config {path}: tool names must be unique, {duplicates} appear more than once")
    return tools
