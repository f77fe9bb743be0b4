"""``agentrl/PythonTool-v0``: ReTool-style math with a Python interpreter.

The model writes ``<code>```python ...```</code>``, the sandbox runs it in a session that keeps
its variables for the episode, and the output comes back as ``<interpreter>...</interpreter>``.
The episode ends at ``<answer>`` (or ``\\boxed{}``); reward 1 for a mathematically equal answer.
With ``require_answer=False`` rows without an ``answer`` are accepted and score no ``correct``
component: label-free training (``reward.source: majority_vote``) supplies it.
"""
from __future__ import annotations

from typing import Sequence

from agentrl.data import load_jsonl
from agentrl.env import ToolEnv
from agentrl.parsers import HermesParser, retool_parser
from agentrl.rewards import math_equal
from agentrl.tools import DisabledTool, PythonTool, session_sandbox

SYSTEM_PROMPT = (
    "Solve the problem. You may run Python by writing <code>```python\n...\n```</code>; "
    "its output comes back in <interpreter></interpreter>. "
    "Give the final answer as <answer>...</answer>."
)
HERMES_SYSTEM_PROMPT = (
    "Solve the problem. You may call the python tool; its output comes back as a tool message. "
    "Give the final answer as <answer>...</answer>."
)
DEFAULT_DATASET = "package:mul4_train.jsonl"
FORMATS = {"retool": (retool_parser, SYSTEM_PROMPT), "hermes": (HermesParser, HERMES_SYSTEM_PROMPT)}


class PythonToolEnv(ToolEnv):
    def __init__(
        self,
        dataset: str | Sequence[dict] = DEFAULT_DATASET,
        sandbox="local",
        max_turns: int = 4,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_output_chars: int = 2000,
        format_reward: float = 0.0,
        tool_call_reward: float = 0.0,
        system_prompt: str | None = None,
        tool_format: str = "retool",
        tool_enabled: bool = True,
        limit: int | None = None,
        render_mode: str | None = None,
        max_parallel_calls: int = 4,
        require_answer: bool = True,
    ):
        if tool_format not in FORMATS:
            raise ValueError(f"tool_format must be one of {sorted(FORMATS)}, got {tool_format!r}")
        required = ("question", "answer") if require_answer else ("question",)
        tasks = load_jsonl(dataset, limit=limit, require=required) if isinstance(dataset, str) else list(dataset)
        self._owns_sandbox = isinstance(sandbox, str) and tool_enabled
        if self._owns_sandbox:  # an episode only runs code in its own session
            sandbox = session_sandbox(sandbox)
        self.sandbox = sandbox
        tool = PythonTool(sandbox, timeout_s=timeout_s, memory_mb=memory_mb, max_output_chars=max_output_chars)
        if not tool_enabled:  # the no-tool control: calls are answered, nothing runs, no sandbox starts
            tool = DisabledTool(tool, "Error: the interpreter is disabled in this environment")
        make_parser, default_prompt = FORMATS[tool_format]
        # Hermes runs the first max_parallel_calls calls of a turn; ReTool refuses a turn with more.
        limit_kw = {"max_parallel_calls": max_parallel_calls} if tool_format == "hermes" else {"max_calls_per_turn": max_parallel_calls}
        super().__init__(tasks, [tool], make_parser(**limit_kw), max_turns=max_turns, render_mode=render_mode)
        self.system_prompt = system_prompt or default_prompt
        self.format_reward = format_reward
        self.tool_call_reward = tool_call_reward

    def build_prompt(self, task: dict) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task["question"]}]

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        components = {"correct": float(math_equal(answer, str(task["answer"])))} if "answer" in task else {}
        if self.format_reward:
            components["format"] = self.format_reward * float(answer is not None)
        return components

    def turn_reward(self, turn, outputs) -> float:
        ran = any(not o.startswith("Error:") for o in outputs) and bool(turn.calls)
        return self.tool_call_reward * float(ran)

    def close(self) -> None:
        super().close()
        if self._owns_sandbox:
            self.sandbox.close()
