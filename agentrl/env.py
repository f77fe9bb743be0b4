"""The environment seam: a multi-turn text ``gymnasium.Env`` that wraps tools.

The action is the model's text for one turn; the observation is the text the environment
appends (tool output, or feedback). ``reset`` returns the prompt as chat messages.
Subclasses supply the prompt and the reward; the turn loop is fixed here.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import gymnasium as gym

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


class ToolEnv(gym.Env):
    """Multi-turn tool environment over a dataset of tasks (dict rows).

    ``reset(options={"task": row})`` or ``{"task_index": i}`` poses a given task (the collector
    does this for GRPO groups); otherwise a task is drawn with the env's seeded RNG.
    """

    metadata = {"render_modes": ["ansi"]}

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
        self.parser = parser
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.action_space = TextSpace()
        self.observation_space = TextSpace()
        self.task: dict = {}
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
        return self.parser.stop_strings

    @property
    def chat_observations(self) -> bool:
        """True when the collector should wrap observations in the chat template's tool turn."""
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
        prompt = self.build_prompt(self.task)
        self._transcript = [f"[{m['role']}] {m['content']}" for m in prompt]
        return prompt, {"task_id": str(self.task.get("id", "")), "tools": sorted(self.tools)}

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be the model's text (str), got {type(action).__name__}")
        self._turn += 1
        turn = self.parser.parse(action)
        info: dict[str, Any] = {
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in turn.calls],
            "parse_errors": list(turn.errors),
            "n_invalid_calls": len(turn.errors),
            "tool_latency_s": 0.0,
            "turn": self._turn,
        }
        self._transcript.append(f"[assistant] {action}")
        if turn.answer is not None:
            return self._finish("", turn.answer, info, truncated=False)

        start = time.perf_counter()
        outputs = [self._call(c.name, c.arguments, info) for c in turn.calls]
        info["tool_latency_s"] = time.perf_counter() - start
        outputs += [f"Error: {e}" for e in turn.errors]
        if not outputs:
            info["n_invalid_calls"] += 1
            outputs = [self.no_action_feedback()]
        observation = self.parser.format_observation(outputs)
        reward = self.turn_reward(turn, outputs)
        info["turn_reward"] = reward
        self._transcript.append(f"[tool] {observation}")
        if self._turn >= self.max_turns:
            return self._finish(observation, None, info, truncated=True, turn_reward=reward)
        return observation, reward, False, False, info

    def _call(self, name: str, arguments: dict, info: dict) -> str:
        tool = self.tools.get(name)
        if tool is None:
            info["n_invalid_calls"] += 1
            return f"Error: unknown tool {name!r}; available: {', '.join(sorted(self.tools))}"
        try:
            return tool.call(arguments)
        except Exception as e:  # a tool's failure is something the model reads, not a crash
            info["n_tool_errors"] = info.get("n_tool_errors", 0) + 1
            return f"Error: {type(e).__name__}: {e}"

    def no_action_feedback(self) -> str:
        closers = " or ".join(self.parser.stop_strings)
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
