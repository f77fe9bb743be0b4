"""Plain data that flows between the seams: tool calls, parsed turns, trajectories.

No torch here: environments, parsers, tools and the sandbox use these without a model.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ToolCall:
    """One tool invocation parsed out of a model turn."""

    name: str
    """Tool name, e.g. ``python`` or ``search``."""
    arguments: dict[str, Any]
    """Keyword arguments for ``Tool.call``."""
    raw: str = ""
    """The exact text span of the call in the model's turn (for logs)."""


@dataclass
class ParsedTurn:
    """What a parser made of one model turn. Parsers never raise; problems go in ``errors``."""

    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    """Final answer text, when the turn ends the episode (``<answer>`` or ``\\boxed{}``)."""
    errors: list[str] = field(default_factory=list)
    """Human-readable descriptions of malformed calls; the env turns them into an observation."""
    extras: dict[str, list[str]] = field(default_factory=dict)
    """Other tagged spans a format defines (e.g. AutoRefine's ``refine`` blocks)."""


class StopReason(str, enum.Enum):
    """Why an episode ended."""

    ANSWER = "answer"
    MAX_TURNS = "max_turns"
    MAX_TOKENS = "max_tokens"
    NO_ACTION = "no_action"  # the model stopped without a call or an answer
    ERROR = "error"  # infrastructure failure (not a tool's failure, which is an observation)


@dataclass
class TurnRecord:
    """One model turn and the environment's answer to it."""

    action: str
    """Decoded text the model generated this turn."""
    observation: str
    """Text the environment appended (tool output or feedback); empty on the last turn."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    tool_latency_s: float = 0.0
    reward: float = 0.0
    """Per-turn (process) reward, when the environment gives one."""
    n_action_tokens: int = 0
    n_observation_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """One finished episode, exactly as the model saw and produced it.

    ``input_ids``, ``loss_mask`` and ``logprobs`` are aligned token by token over the whole
    interleaved sequence (prompt, then model turns and observations in order).
    """

    input_ids: list[int]
    loss_mask: list[int]
    """1 on tokens the policy sampled, 0 on prompt and observation tokens."""
    logprobs: list[float]
    """Sampling log-prob of each token (0.0 where loss_mask is 0)."""
    prompt_len: int
    turns: list[TurnRecord]
    reward: float
    reward_components: dict[str, float]
    stop_reason: StopReason
    truncated: bool
    """True when the episode hit the token limit (the trainer's overlong handling applies)."""
    group_id: int = 0
    """Episodes sharing a group id answer the same task (GRPO groups)."""
    task_id: str = ""
    turn_spans: list[tuple[int, int]] = field(default_factory=list)
    """(start, end) token positions of each model turn, for turn-level advantages."""
    info: dict[str, Any] = field(default_factory=dict)
    policy_version: int = 0
    """The weights version that sampled it: the number of optimiser steps behind those weights
    (sync training: the step it is trained at; async rollouts: at most ``max_staleness`` less)."""

    @property
    def n_generated(self) -> int:
        return sum(self.loss_mask)

    @property
    def n_tool_calls(self) -> int:
        return sum(len(t.calls) for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop_reason"] = self.stop_reason.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["turns"] = [TurnRecord(**t) for t in d["turns"]]
        d["stop_reason"] = StopReason(d["stop_reason"])
        d["turn_spans"] = [tuple(s) for s in d.get("turn_spans", [])]
        return cls(**d)
