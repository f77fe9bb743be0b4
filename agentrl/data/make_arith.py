"""Generate the shipped arithmetic task files (deterministic): ``python -m agentrl.data.make_arith``.

Multiplying two 4-digit numbers is beyond a tiny model's mental arithmetic but trivial with the
interpreter, so reward rises only if the policy learns to call the tool and copy its output.
"""
import random
from pathlib import Path

from agentrl.data import write_jsonl


def mul4_rows(n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
        rows.append({"id": f"{prefix}-{i}", "question": f"What is {a} * {b}?", "answer": str(a * b), "a": a, "b": b})
    return rows


def mul4_sft_traces(rows: list[dict], tool_fraction: float, seed: int) -> list[dict]:
    """Warm-start traces in the PythonTool env's exact format. A ``tool_fraction`` of them call
    the interpreter and copy its output; the rest answer at once (correctly: but a tiny model
    cannot learn 4-digit multiplication, so at rollout time that style mostly fails)."""
    from agentrl.envs.python_tool import SYSTEM_PROMPT
    from agentrl.parsers import retool_parser

    rng = random.Random(seed)
    observation = retool_parser().format_observation
    traces = []
    for row in rows:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
        if rng.random() < tool_fraction:
            code = f"<code>\n```python\nprint({row['a']} * {row['b']})\n```\n</code>"
            messages += [{"role": "assistant", "content": code}, {"role": "tool", "content": observation([row["answer"]])}]
        messages.append({"role": "assistant", "content": f"<answer>{row['answer']}</answer>"})
        traces.append({"id": row["id"], "messages": messages})
    return traces


if __name__ == "__main__":
    here = Path(__file__).parent
    write_jsonl(here / "mul4_train.jsonl", mul4_rows(2000, seed=0, prefix="mul4-train"))
    write_jsonl(here / "mul4_test.jsonl", mul4_rows(200, seed=1, prefix="mul4-test"))
    write_jsonl(here / "mul4_sft.jsonl", mul4_sft_traces(mul4_rows(1000, seed=2, prefix="mul4-sft"), 0.5, seed=3))
