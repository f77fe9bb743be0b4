"""The environment seam: a multi-turn text ``gymnasium.Env`` that wraps tools.

The action is the model's text for one turn; the observation is the text the environment
appends (tool output, or feedback). ``reset`` returns the prompt as chat messages.
Subclasses supply the prompt and the reward; the turn loop is fixed here.

The envs pass gymnasium's own ``check_env`` (a seeded reset and step give the same observation
and info: wall-clock tool latency is kept out of ``info``, in ``last_tool_latency_s``) and run
in ``gymnasium.make_vec`` in both modes: ``TextSpace`` registers gymnasium's shared-memory
functions, so ``AsyncVectorEnv``'s default ``shared_memory=True`` works.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Sequence as _SequenceABC
from typing import Any, Sequence

import gymnasium as gym
import jsonschema
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

from agentrl.parsers import ToolCallParser
from agentrl.tools import Tool, tool_schema
from agentrl.types import ParsedTurn


class TextSpace(gym.spaces.Space):
    """Any ``str`` up to ``max_length`` characters, or a list of chat messages (what ``reset``
    returns). gymnasium's ``Text`` space limits the charset, which model text does not obey."""

    def __init__(self, max_length: int = 1_000_000, seed: int | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        if isinstance(x, list):
            return all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in x)
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, 16))
        return "".join(chr(int(c)) for c in self.np_random.integers(32, 127, size=n))

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"TextSpace({self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


# -- AsyncVectorEnv shared memory for TextSpace ------------------------------------------------
# One fixed slot per sub-environment: 8 bytes of length, 1 byte of kind (0: str as UTF-8,
# 1: a list of messages as JSON), then the bytes. 4 bytes per character hold any str within
# max_length ("surrogatepass" keeps lone surrogates, which model text can contain).
_SLOT_HEADER = 9


def _slot_size(space: TextSpace) -> int:
    return _SLOT_HEADER + 4 * space.max_length


def _encode_text(value: Any) -> tuple[int, bytes]:
    if isinstance(value, str):
        return 0, value.encode("utf-8", "surrogatepass")
    return 1, json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


class SharedTexts(_SequenceABC):
    """The batch of observations in shared memory, decoded on access: AsyncVectorEnv reads its
    shared buffer once and returns that object after every step, so it must be a live view (as
    numpy views are for Box spaces). A copy (``copy=True``, the default) is a plain tuple."""

    def __init__(self, shared_memory: Any, n: int, slot: int):
        self._memory, self._n, self._slot = shared_memory, n, slot

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self._n)))
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(index)
        view = memoryview(self._memory.get_obj()).cast("B")
        base = index * self._slot
        length = int.from_bytes(view[base : base + 8], "little")
        data = bytes(view[base + _SLOT_HEADER : base + _SLOT_HEADER + length]).decode("utf-8", "surrogatepass")
        return data if view[base + 8] == 0 else json.loads(data)

    def __deepcopy__(self, memo: dict) -> tuple:
        return tuple(self)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, (SharedTexts, tuple, list)) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"SharedTexts({tuple(self)!r})"


@create_shared_memory.register(TextSpace)
def _create_text_shared_memory(space: TextSpace, n: int = 1, ctx: Any = mp):
    return ctx.Array("B", n * _slot_size(space))


@read_from_shared_memory.register(TextSpace)
def _read_text_from_shared_memory(space: TextSpace, shared_memory: Any, n: int = 1) -> SharedTexts:
    return SharedTexts(shared_memory, n, _slot_size(space))


@write_to_shared_memory.register(TextSpace)
def _write_text_to_shared_memory(space: TextSpace, index: int, value: Any, shared_memory: Any) -> None:
    kind, data = _encode_text(value)
    slot = _slot_size(space)
    if len(data) > slot - _SLOT_HEADER:
        raise ValueError(f"an observation of {len(data)} bytes does not fit the {slot - _SLOT_HEADER}-byte shared-memory "
                         f"slot of {space!r}; make the vector env with vector_kwargs={{'shared_memory': False}}")
    view = memoryview(shared_memory.get_obj()).cast("B")
    base = index * slot
    view[base : base + 8] = len(data).to_bytes(8, "little")
    view[base + 8] = kind
    view[base + _SLOT_HEADER : base + _SLOT_HEADER + len(data)] = data


def schema_validator(tool: Tool):
    """A jsonschema validator for the tool's ``parameters`` (None when the tool declares none)."""
    schema = getattr(tool, "parameters", None)
    if not schema:
        return None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        raise ValueError(f"tool {tool.name!r} has an invalid parameters schema: {e.message}") from None
    return cls(schema)


def clip_text(text: str, limit: int, marker: str = "\n...[truncated]...\n") -> str:
    """``text`` cut to at most ``limit`` characters around ``marker`` (head and tail kept)."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:limit]
    head = (limit - len(marker)) * 3 // 4
    return text[:head] + marker + text[len(text) - (limit - len(marker) - head):]


class ToolEnv(gym.Env):
    """Multi-turn tool environment over a dataset of tasks (dict rows).

    ``reset(options={"task": row})`` or ``{"task_index": i}`` poses a given task (the collector
    does this for GRPO groups); otherwise a task is drawn with the env's seeded RNG.

    ``info`` is a function of the seed and the actions (gymnasium's ``check_env`` checks this):
    it carries the parsed calls, their outputs (``tool_outputs``, one per call then one per
    error), invalid-call counts and reward components. The wall-clock time the last step spent
    in tools is ``last_tool_latency_s``, an attribute, not part of ``info``.

    A call's arguments are checked against the tool's ``parameters`` JSON schema (jsonschema)
    before it runs: a mismatch, like an unknown tool, is an error observation naming the
    problem and counts in ``n_invalid_calls``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}
    max_observation_chars = 65_536
    """Longest observation: longer tool outputs are cut (head and tail kept) to fit, so every
    observation lies in ``observation_space`` (and in AsyncVectorEnv's shared memory)."""

    def __init__(
        self,
        tasks: Sequence[dict],
        tools: Sequence[Tool],
        parser: ToolCallParser,
        max_turns: int = 4,
        render_mode: str | None = None,
    ):
        if not tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self.tasks = list(tasks)
        self.tools = {t.name: t for t in tools}
        # one validator per tool, built (and its schema checked) once: a bad schema fails here, not mid-episode
        self._validators = {name: schema_validator(t) for name, t in self.tools.items()}
        self.parser = parser
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.action_space = TextSpace()
        self.observation_space = TextSpace(self.max_observation_chars)
        self.task: dict = {}
        self.last_tool_latency_s = 0.0
        """Seconds the last ``step`` spent running tool calls (wall clock; 0.0 without calls)."""
        self._turn = 0
        self._transcript: list[str] = []

    # -- hooks for subclasses -------------------------------------------------------------
    def build_prompt(self, task: dict) -> list[dict[str, str]]:
        raise NotImplementedError

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        """Reward components of the final answer (``None`` when the episode ended without one).
        The reward is their sum; components named with a leading ``_`` are reported only."""
        raise NotImplementedError

    def turn_reward(self, turn: ParsedTurn, outputs: list[str]) -> float:
        """Per-turn (process) reward; zero unless a subclass defines one."""
        return 0.0

    # -- gymnasium API ---------------------------------------------------------------------
    @property
    def stop_strings(self) -> tuple[str, ...]:
        """What the engine stops a turn at: tag formats' closers; none for chat formats, whose
        turn ends at the end-of-turn token the model samples (EOS / ``<|im_end|>``)."""
        return self.parser.stop_strings

    @property
    def chat_observations(self) -> bool:
        """True when the collector should render each tool output as a tool message of the chat template."""
        return getattr(self.parser, "chat", False)

    @property
    def tool_schemas(self) -> list[dict]:
        """Function schemas for chat templates that render a tool list (chat formats only)."""
        return [tool_schema(t) for t in self.tools.values()] if self.chat_observations else []

    def truncate(self) -> tuple[float, dict[str, float]]:
        """Score the episode when the collector cuts it (token limit): no final answer."""
        components = self.score(None, self.task)
        return sum(v for k, v in components.items() if not k.startswith("_")), components

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task" in options:
            self.task = options["task"]
        elif "task_index" in options:
            self.task = self.tasks[options["task_index"] % len(self.tasks)]
        else:
            self.task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        for tool in self.tools.values():
            if hasattr(tool, "reset"):
                tool.reset()
        self._turn = 0
        self.last_tool_latency_s = 0.0
        prompt = self.build_prompt(self.task)
        self._transcript = [f"[{m['role']}] {m['content']}" for m in prompt]
        return prompt, {"task_id": str(self.task.get("id", "")), "tools": sorted(self.tools)}

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be the model's text (str), got {type(action).__name__}")
        self._turn += 1
        self.last_tool_latency_s = 0.0
        turn = self.parser.parse(action)
        info: dict[str, Any] = {
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in turn.calls],
            "tool_outputs": [],
            "parse_errors": list(turn.errors),
            "n_invalid_calls": len(turn.errors),
            "turn": self._turn,
        }
        self._transcript.append(f"[assistant] {action}")
        if turn.answer is not None:
            return self._finish("", turn.answer, info, truncated=False)

        start = time.perf_counter()
        outputs = [self._call(c.name, c.arguments, info) for c in turn.calls]
        if turn.calls:
            self.last_tool_latency_s = time.perf_counter() - start
        outputs += [f"Error: {e}" for e in turn.errors]
        if not outputs:
            info["n_invalid_calls"] += 1
            outputs = [self.no_action_feedback()]
        outputs = self._fit(outputs)
        observation = clip_text(self.parser.format_observation(outputs), self.observation_space.max_length)
        info["tool_outputs"] = outputs
        reward = self.turn_reward(turn, outputs)
        info["turn_reward"] = reward
        self._transcript.append(f"[tool] {observation}")
        if self._turn >= self.max_turns:
            return self._finish(observation, None, info, truncated=True, turn_reward=reward)
        return observation, reward, False, False, info

    def _fit(self, outputs: list[str]) -> list[str]:
        """Cut outputs so that, with the format's wrapping, the observation fits the space."""
        budget = max(256, self.max_observation_chars // len(outputs) - 64)
        return [clip_text(o, budget, "\n...[output truncated]...\n") for o in outputs]

    def _call(self, name: str, arguments: dict, info: dict) -> str:
        tool = self.tools.get(name)
        if tool is None:
            info["n_invalid_calls"] += 1
            shown = name if len(name) <= 64 else name[:64] + "..."
            return f"Error: unknown tool {shown!r}; available: {', '.join(sorted(self.tools))}"
        problem = self._argument_problem(name, tool, arguments)
        if problem is not None:
            info["n_invalid_calls"] += 1
            return f"Error: arguments for {name!r} do not match its schema: {problem}"
        try:
            return tool.call(arguments)
        except Exception as e:  # a tool's failure is something the model reads, not a crash
            info["n_tool_errors"] = info.get("n_tool_errors", 0) + 1
            return f"Error: {type(e).__name__}: {e}"

    def _argument_problem(self, name: str, tool: Tool, arguments: dict) -> str | None:
        """What is wrong with ``arguments`` under the tool's ``parameters`` JSON schema (None: nothing)."""
        if name not in self._validators:  # a tool added after __init__
            self._validators[name] = schema_validator(tool)
        validator = self._validators[name]
        if validator is None:
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."  # it quotes the value
        return f"{message} (at {where})" if where else message

    def no_action_feedback(self) -> str:
        closers = " or ".join(getattr(self.parser, "closers", None) or self.parser.stop_strings)
        return f"Error: no tool call or answer found; end a call or your answer with {closers}."

    def _finish(self, observation: str, answer: str | None, info: dict, truncated: bool, turn_reward: float = 0.0):
        components = self.score(answer, self.task)
        info["reward_components"] = components
        info["answer"] = answer
        reward = sum(v for k, v in components.items() if not k.startswith("_")) + turn_reward
        return observation, reward, not truncated, truncated, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return "\n".join(self._transcript)
        return None

    def close(self) -> None:
        for tool in self.tools.values():
            if hasattr(tool, "close"):
                tool.close()
