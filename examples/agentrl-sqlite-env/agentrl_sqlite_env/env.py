"""``sqlite_env/ShopSQL-v0``: answer questions about a shop by querying its database.

The model calls the ``query`` tool in Hermes / Qwen format (``<tool_call>{"name": "query",
"arguments": {"sql": "..."}}</tool_call>``; the chat template renders the tool's JSON schema),
reads the rows, and answers in ``<answer>...</answer>``. Reward 1 for the right answer.
"""
from __future__ import annotations

from pathlib import Path

from agentrl.data import load_jsonl
from agentrl.env import ToolEnv
from agentrl.function_tools import tool_from_function
from agentrl.parsers import HermesParser

from agentrl_sqlite_env.sql_tool import ShopDatabase

DEFAULT_TASKS = str(Path(__file__).with_name("tasks.jsonl"))
SYSTEM_PROMPT = (
    "Answer the question about the shop. Call the query tool to run SQL on its database:\n"
    "{schema}\n"
    "Give the final answer as <answer>...</answer>."
)


def normalize(text: str) -> str:
    text = " ".join(str(text).strip().lower().split())
    try:  # 13293, 13293.0 and 13,293 are the same number
        return repr(float(text.replace(",", "")))
    except ValueError:
        return text


class ShopSQLEnv(ToolEnv):
    def __init__(self, dataset: str = DEFAULT_TASKS, max_turns: int = 4, timeout_s: float = 1.0,
                 max_rows: int = 20, limit: int | None = None, render_mode: str | None = None):
        tasks = load_jsonl(dataset, limit=limit, require=("question", "answer"))
        self.db = ShopDatabase(max_rows=max_rows, timeout_s=timeout_s)
        query_tool = tool_from_function(self.db.query)  # name, description, schema from the docstring
        super().__init__(tasks, [query_tool], HermesParser(), max_turns=max_turns, render_mode=render_mode)

    def build_prompt(self, task: dict) -> list[dict[str, str]]:
        system = SYSTEM_PROMPT.format(schema=self.db.schema)
        return [{"role": "system", "content": system}, {"role": "user", "content": task["question"]}]

    def score(self, answer: str | None, task: dict) -> dict[str, float]:
        correct = answer is not None and normalize(answer) == normalize(task["answer"])
        return {"correct": float(correct)}

    def close(self) -> None:
        super().close()
        self.db.close()
