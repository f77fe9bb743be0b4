"""Tool-call parsers: model text in, ``ParsedTurn`` out. They never raise.

Each format also knows its stop strings (the closers the engine stops at) and how a tool's
output is wrapped for the model to read.

Parsing is a linear scan (``str.find``, never a regex that can rescan from every opener), so a
turn of a million openers costs one pass; every JSON failure (bad syntax, nesting past the
recursion limit, integers past Python's digit limit) becomes an error in ``ParsedTurn.errors``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Protocol

from agentrl.types import ParsedTurn, ToolCall

MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in a call's JSON: deeper arguments are an error observation (they
would overflow the recursion of everything downstream that walks them: copies, logs, templates)."""
_FENCE_LANG = re.compile(r"[A-Za-z0-9_+-]*\n")


class ToolCallParser(Protocol):
    stop_strings: tuple[str, ...]

    def parse(self, text: str) -> ParsedTurn: ...

    def format_observation(self, outputs: list[str]) -> str: ...


def find_tagged(text: str, open_tag: str, close_tag: str) -> tuple[list[tuple[int, int]], int | None]:
    """``(start, end)`` of every ``open_tag ... close_tag`` body, left to right and non-overlapping
    (what ``re.findall(open(.*?)close, re.S)`` finds), and the position of an opener that is
    never closed (``None`` if there is none). One pass over ``text``: each ``find`` resumes where
    the previous one stopped, and a missing closer ends the scan (no later opener can close)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            return spans, None
        body = start + len(open_tag)
        end = text.find(close_tag, body)
        if end < 0:
            return spans, start
        spans.append((body, end))
        pos = end + len(close_tag)


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
    spans, _ = find_tagged(text, "<answer>", "</answer>")
    if spans:
        start, end = spans[-1]
        return text[start:end].strip()
    return extract_boxed(text) if allow_boxed else None


def _json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion to overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(text: str) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why)`` for any failure: ``json.loads`` raises
    ``JSONDecodeError``, but also ``RecursionError`` (deep nesting) and ``ValueError`` (an integer
    past ``sys.get_int_max_str_digits()``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at position {e.pos}"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:
        return None, "a number has too many digits" if "digits" in str(e) else str(e)[:200]
    except Exception as e:  # anything else json can raise is still the model's text, not a crash
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    if _json_depth(value) > MAX_JSON_DEPTH:
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    return value, None


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
        self._open, self._close = f"<{tag}>", f"</{tag}>"
        self.stop_strings = (self._close, "</answer>")
        self.closers = self.stop_strings

    def parse(self, text: str) -> ParsedTurn:
        turn = ParsedTurn(answer=_find_answer(text, self.allow_boxed))
        turn.extras = {t: [text[a:b].strip() for a, b in find_tagged(text, f"<{t}>", f"</{t}>")[0]] for t in self.extra_tags}
        if turn.answer is not None:
            return turn
        spans, unclosed = find_tagged(text, self._open, self._close)
        # An opener after the last closed call means the model stopped mid-call.
        if unclosed is not None:
            turn.errors.append(f"unclosed <{self.tag}> tag: close it with </{self.tag}>")
        if len(spans) > self.max_calls_per_turn:
            turn.errors.append(f"too many <{self.tag}> calls in one turn ({len(spans)} > {self.max_calls_per_turn})")
            return turn
        for start, end in spans:
            body = text[start:end]
            arg = self._clean(body)
            if not arg:
                turn.errors.append(f"empty <{self.tag}></{self.tag}> call")
                continue
            turn.calls.append(ToolCall(self.tool_name, {self.argument: arg}, raw=f"{self._open}{body}{self._close}"))
        return turn

    def _clean(self, body: str) -> str:
        body = body.strip()
        if self.strip_code_fence and len(body) >= 6 and body.startswith("```") and body.endswith("```"):
            # ```lang\n code \n``` -> code; the language name counts only when a newline ends it.
            inner = body[3:-3]
            lang = _FENCE_LANG.match(inner)
            if lang:
                inner = inner[lang.end():]
            body = inner[:-1] if inner.endswith("\n") else inner
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

    With ``chat=True`` (the default) the turn is a chat template's assistant turn: it has no stop
    strings and ends where the model ends it (EOS / ``<|im_end|>``, sampled like any token), so a
    turn can hold several calls, as Qwen2.5 and Qwen3 are tuned to make. Every call in it runs, up
    to ``max_parallel_calls`` (more are reported as an error; verl's tool agent loop drops them),
    and each output becomes its own tool message, rendered by the template (which adds
    ``<tool_response>`` itself, one block per call). With ``chat=False`` the turn stops at
    ``</tool_call>`` and the outputs are ``<tool_response>`` blocks appended as text.
    """

    observation_tag = "tool_response"
    closers = ("</tool_call>", "</answer>")

    def __init__(self, max_parallel_calls: int = 4, allow_boxed: bool = True, chat: bool = True):
        if max_parallel_calls < 1:
            raise ValueError(f"max_parallel_calls must be >= 1, got {max_parallel_calls}")
        self.max_parallel_calls = max_parallel_calls
        self.allow_boxed = allow_boxed
        self.chat = chat

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return () if self.chat else self.closers

    def parse(self, text: str) -> ParsedTurn:
        turn = ParsedTurn(answer=_find_answer(text, self.allow_boxed))
        if turn.answer is not None:
            return turn
        spans, unclosed = find_tagged(text, "<tool_call>", "</tool_call>")
        if unclosed is not None:
            turn.errors.append("unclosed <tool_call> tag")
        if len(spans) > self.max_parallel_calls:
            turn.errors.append(f"too many tool calls in one turn: ran the first {self.max_parallel_calls} of {len(spans)}")
            spans = spans[: self.max_parallel_calls]
        for start, end in spans:
            body = text[start:end]
            obj, error = load_json(body)
            if error is not None:
                turn.errors.append(f"tool call is not valid JSON: {error}")
                continue
            name, args = (obj.get("name"), obj.get("arguments", {})) if isinstance(obj, dict) else (None, None)
            if isinstance(args, str):  # some models emit arguments as a JSON string
                args, _ = load_json(args)
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
