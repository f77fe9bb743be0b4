"""Tool-call parsers: model text in, ``ParsedTurn`` out. They never raise.

Each format also knows its stop strings (the closers the engine stops at) and how a tool's
output is wrapped for the model to read.
"""
from __future__ import annotations

import json
import re
from typing import Protocol

from agentrl.types import ParsedTurn, ToolCall

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


class ToolCallParser(Protocol):
    stop_strings: tuple[str, ...]

    def parse(self, text: str) -> ParsedTurn: ...

    def format_observation(self, outputs: list[str]) -> str: ...


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, honouring nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _find_answer(text: str, allow_boxed: bool) -> str | None:
    matches = ANSWER_RE.findall(text)
    if matches:
        return matches[-1].strip()
    return extract_boxed(text) if allow_boxed else None


class TagParser:
    """``<tag>body</tag>`` calls answered by ``<obs_tag>output</obs_tag>`` (ReTool, Search-R1).

    A turn with an ``<answer>`` ends the episode; calls after the answer are ignored.
    """

    def __init__(
        self,
        tag: str,
        tool_name: str,
        argument: str,
        observation_tag: str,
        max_calls_per_turn: int = 4,
        allow_boxed: bool = False,
        strip_code_fence: bool = False,
        extra_tags: tuple[str, ...] = (),
    ):
        self.tag, self.tool_name, self.argument = tag, tool_name, argument
        self.observation_tag = observation_tag
        self.max_calls_per_turn = max_calls_per_turn
        self.allow_boxed = allow_boxed
        self.strip_code_fence = strip_code_fence
        self.extra_tags = extra_tags
        self.stop_strings = (f"</{tag}>", "</answer>")
        self._call_re = re.compile(rf"<{tag}>(.*?)</{tag}>", re.S)

    def parse(self, text: str) -> ParsedTurn:
        turn = ParsedTurn(answer=_find_answer(text, self.allow_boxed))
        turn.extras = {t: [m.strip() for m in re.findall(rf"<{t}>(.*?)</{t}>", text, re.S)] for t in self.extra_tags}
        if turn.answer is not None:
            return turn
        bodies = self._call_re.findall(text)
        # An opener after the last closed call means the model stopped mid-call.
        tail = text[text.rfind(f"</{self.tag}>") + 1 :] if bodies else text
        if f"<{self.tag}>" in tail:
            turn.errors.append(f"unclosed <{self.tag}> tag: close it with </{self.tag}>")
        if len(bodies) > self.max_calls_per_turn:
            turn.errors.append(f"too many <{self.tag}> calls in one turn ({len(bodies)} > {self.max_calls_per_turn})")
            return turn
        for body in bodies:
            arg = self._clean(body)
            if not arg:
                turn.errors.append(f"empty <{self.tag}></{self.tag}> call")
                continue
            turn.calls.append(ToolCall(self.tool_name, {self.argument: arg}, raw=f"<{self.tag}>{body}</{self.tag}>"))
        return turn

    def _clean(self, body: str) -> str:
        body = body.strip()
        if self.strip_code_fence:
            m = re.fullmatch(r"```[a-zA-Z0-9_+-]*\n?(.*?)\n?```", body, re.S)
            if m:
                body = m.group(1)
        return body.strip("\n") if self.strip_code_fence else body.strip()

    def format_observation(self, outputs: list[str]) -> str:
        return "".join(f"\n<{self.observation_tag}>\n{o}\n</{self.observation_tag}>\n" for o in outputs)


def retool_parser(**kw) -> TagParser:
    """ReTool: ``<code>```python ...```</code>`` answered by ``<interpreter>...</interpreter>``."""
    return TagParser("code", "python", "code", "interpreter", allow_boxed=True, strip_code_fence=True, **kw)


def search_r1_parser(observation_tag: str = "information", **kw) -> TagParser:
    """Search-R1: ``<search>q</search>`` answered by ``<information>...</information>``."""
    return TagParser("search", "search", "query", observation_tag, **kw)


def autorefine_parser(**kw) -> TagParser:
    """AutoRefine: like Search-R1 with ``<documents>`` and the model's ``<refine>`` notes."""
    return TagParser("search", "search", "query", "documents", extra_tags=("refine",), **kw)


class HermesParser:
    """Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    With ``chat=True`` (the default) the observation is the plain tool output and the collector
    wraps it in the chat template's tool turn (which adds ``<tool_response>`` itself, as Qwen's
    does); with ``chat=False`` it is ``<tool_response>`` blocks appended as text.
    """

    stop_strings = ("</tool_call>", "</answer>")
    observation_tag = "tool_response"

    def __init__(self, max_calls_per_turn: int = 4, allow_boxed: bool = True, chat: bool = True):
        self.max_calls_per_turn = max_calls_per_turn
        self.allow_boxed = allow_boxed
        self.chat = chat

    def parse(self, text: str) -> ParsedTurn:
        turn = ParsedTurn(answer=_find_answer(text, self.allow_boxed))
        if turn.answer is not None:
            return turn
        bodies = re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)
        if "<tool_call>" in text[text.rfind("</tool_call>") + 1 :] if bodies else "<tool_call>" in text:
            turn.errors.append("unclosed <tool_call> tag")
        if len(bodies) > self.max_calls_per_turn:
            turn.errors.append(f"too many tool calls in one turn ({len(bodies)} > {self.max_calls_per_turn})")
            return turn
        for body in bodies:
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as e:
                turn.errors.append(f"tool call is not valid JSON: {e.msg} at position {e.pos}")
                continue
            name, args = (obj.get("name"), obj.get("arguments", {})) if isinstance(obj, dict) else (None, None)
            if isinstance(args, str):  # some models emit arguments as a JSON string
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    args = None
            if not isinstance(name, str) or not isinstance(args, dict):
                turn.errors.append('tool call must be {"name": str, "arguments": object}')
                continue
            turn.calls.append(ToolCall(name, args, raw=f"<tool_call>{body}</tool_call>"))
        return turn

    def format_observation(self, outputs: list[str]) -> str:
        if self.chat:
            return "\n\n".join(outputs)
        return "".join(f"<tool_response>\n{o}\n</tool_response>\n" for o in outputs)


PARSERS = {"retool": retool_parser, "search_r1": search_r1_parser, "autorefine": autorefine_parser, "hermes": HermesParser}


def make_parser(name: str, **kw) -> ToolCallParser:
    if name not in PARSERS:
        raise ValueError(f"unknown parser {name!r}; choose one of {sorted(PARSERS)}")
    return PARSERS[name](**kw)
