"""``agentrl/ToolUse-v0``: one environment, two tools (Python and search), and the model chooses.

In the style of Tool-Star: a question needs a fact (``search``), a calculation (``python``) or
both, and the model calls the tools as Hermes / Qwen do, ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` in a chat turn that ends at its ``<|im_end|>``; the tools' JSON schemas are
rendered into the system turn by the tokenizer's chat template and each output comes back as a
tool message. Calls to unknown tools, and arguments that do not match a tool's schema, get an
error observation naming the problem (``ToolEnv._call``).

Reward: exact match (SQuAD-normalised) of ``<answer>`` against the task's ``answers``. Reported
only (components starting with ``_``): which tools ran in the episode (``_called_search``,
``_called_python``) and whether they were exactly the ones the task's ``kind`` needs
(``_right_tools``: lookup {search}, arithmetic {python}, both {search, python}).

Tasks default to the fictional knowledge base (``agentrl.data.make_kb``): its train split, and
search by default runs an in-memory BM25 over its corpus (``corpus=``); ``retriever=``,
``index_dir=`` or ``retriever_url=`` use another retriever, as in ``agentrl/Search-v0``.
"""
from __future__ import annotations

import functools
import threading
from typing import Sequence

from agentrl.env import ToolEnv
from agentrl.envs.search import SearchTool, load_tasks, make_retriever
from agentrl.parsers import HermesParser
from agentrl.rewards import exact_match
from agentrl.tools import DisabledTool, PythonTool, session_sandbox

# Tool-Star's system prompt ("solve the given question step by step with the help of the
# wikipedia search tool and python interpreter tool"), cut short: the tiny model pays for every
# prompt token, and the chat template already lists the tools and the call format.
SYSTEM_PROMPT = (
    "Answer the question with the help of the tools: search to look up facts, python to calculate. "
    "Give the final answer as <answer>...</answer>."
)
DEFAULT_DATASET = "package:kb_tooluse_train.jsonl"
DEFAULT_CORPUS = "package:kb_corpus.jsonl"
TOOL_NAMES = ("search", "python")
NEEDED_TOOLS = {"lookup": {"search"}, "arithmetic": {"python"}, "both": {"search", "python"}}
"""The tools each task kind needs: ``_right_tools`` is 1 when the episode called exactly these."""


_build_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _corpus_bm25(corpus: str):
    from agentrl.retrieval.base import iter_corpus
    from agentrl.retrieval.bm25 import BM25Retriever

    return BM25Retriever(list(iter_corpus(corpus)))


def corpus_retriever(corpus: str):
    """One in-memory BM25 index per corpus, shared by every env of the process (a trainer holds
    one env per episode of a step: 64 copies of the index would be 64 builds; BM25Retriever is
    safe to search from the collector's threads)."""
    with _build_lock:  # collectors build envs from several threads
        return _corpus_bm25(corpus)


class ToolUseEnv(ToolEnv):
    def __init__(
        self,
        dataset: str | Sequence[dict] = DEFAULT_DATASET,
        retriever=None,
        index_dir: str | None = None,
        retriever_url: str | None = None,
        corpus: str = DEFAULT_CORPUS,
        topk: int = 3,
        sandbox="local",
        timeout_s: float = 5.0,
        memory_mb: int = 512,
        max_output_chars: int = 2000,
        max_turns: int = 4,
        max_parallel_calls: int = 4,
        limit: int | None = None,
        system_prompt: str | None = None,
        tools_enabled: Sequence[str] = TOOL_NAMES,
        render_mode: str | None = None,
    ):
        enabled = set(tools_enabled)
        if unknown := enabled - set(TOOL_NAMES):
            raise ValueError(f"tools_enabled: unknown tool(s) {sorted(unknown)}; choose from {list(TOOL_NAMES)}")
        tasks = load_tasks(dataset, limit)
        for task in tasks:
            if task.get("kind") is not None and task["kind"] not in NEEDED_TOOLS:
                raise ValueError(f"task {task.get('id')!r}: kind must be one of {sorted(NEEDED_TOOLS)}, got {task['kind']!r}")
        self.sandbox = self.retriever = None
        self._owns_sandbox = self._owns_retriever = False
        tools = [self._search_tool(enabled, retriever, index_dir, retriever_url, corpus, topk),
                 self._python_tool(enabled, sandbox, timeout_s, memory_mb, max_output_chars)]
        super().__init__(tasks, tools, HermesParser(max_parallel_calls=max_parallel_calls), max_turns, render_mode)
        self.system_prompt = system_prompt or SYSTEM_PROMPT
        self._called: set[str] = set()

    def _search_tool(self, enabled, retriever, index_dir, retriever_url, corpus, topk):
        if "search" not in enabled:  # no retriever is built
            return DisabledTool(SearchTool)
        if retriever is None and index_dir is None and retriever_url is None:
            retriever = corpus_retriever(corpus)  # shared and in memory: not this env's to close
        else:
            self._owns_retriever = retriever is None  # an index or HTTP client built here: closed here
            retriever = make_retriever(retriever, index_dir, retriever_url)
        self.retriever = retriever
        return SearchTool(retriever, topk=topk)

    def _python_tool(self, enabled, sandbox, timeout_s, memory_mb, max_output_chars):
        if "python" not in enabled:  # no sandbox starts
            return DisabledTool(PythonTool)
        if isinstance(sandbox, str):  # an episode runs code in its own session, as PythonTool-v0
            sandbox = session_sandbox(sandbox)
            self._owns_sandbox = True
        self.sandbox = sandbox
        return PythonTool(sandbox, timeout_s=timeout_s, memory_mb=memory_mb, max_output_chars=max_output_chars)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._called = set()
        return super().reset(seed=seed, options=options)

    def _call(self, name: str, arguments: dict, info: dict) -> str:
        invalid = info["n_invalid_calls"]
        output = super()._call(name, arguments, info)
        if info["n_invalid_calls"] == invalid:  # a known tool with arguments that fit its schema
            self._called.add(name)
        return output

    def build_prompt(self, task: dict) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task["question"]}]

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        components = {"em": exact_match(answer, task["answers"])}
        components |= {f"_called_{name}": float(name in self._called) for name in TOOL_NAMES}
        if task.get("kind") in NEEDED_TOOLS:
            components["_right_tools"] = float(self._called == NEEDED_TOOLS[task["kind"]])
        return components

    def close(self) -> None:
        super().close()
        if self._owns_sandbox:
            self.sandbox.close()
            self._owns_sandbox = False
        if self._owns_retriever and hasattr(self.retriever, "close"):
            self.retriever.close()
            self._owns_retriever = False
