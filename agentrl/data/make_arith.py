"""Generate the shipped arithmetic task files (deterministic): ``python -m agentrl.data.make_arith``.

Multiplying two numbers is beyond a tiny model's mental arithmetic but trivial with the
interpreter, so reward rises only if the policy learns to call the tool and copy its output.
``mul2`` (2-digit operands) is the CPU demo's task: a ~1M-parameter model copies short numbers
reliably after its copy pretraining; ``mul4`` is the harder variant for bigger models.
"""
import random
from pathlib import Path

from agentrl.data import write_jsonl


def mul_rows(n: int, seed: int, prefix: str, digits: int = 4) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    for i in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        rows.append({"id": f"{prefix}-{i}", "question": f"What is {a} * {b}?", "answer": str(a * b), "a": a, "b": b})
    return rows


def mul_sft_traces(rows: list[dict], tool_fraction: float, seed: int) -> list[dict]:
    """Warm-start traces in the PythonTool env's exact format. A ``tool_fraction`` of them call
    the interpreter and copy its output; the rest answer at once (correctly: but a tiny model
    cannot learn the multiplication table, so at rollout time that style mostly fails)."""
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
    for digits in (2, 4):
        name = f"mul{digits}"
        write_jsonl(here / f"{name}_train.jsonl", mul_rows(2000, 0, f"{name}-train", digits))
        write_jsonl(here / f"{name}_test.jsonl", mul_rows(200, 1, f"{name}-test", digits))
        write_jsonl(here / f"{name}_sft.jsonl", mul_sft_traces(mul_rows(2000, 2, f"{name}-sft", digits), 0.5, seed=3))
