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


if __name__ == "__main__":
    here = Path(__file__).parent
    write_jsonl(here / "mul4_train.jsonl", mul4_rows(2000, seed=0, prefix="mul4-train"))
    write_jsonl(here / "mul4_test.jsonl", mul4_rows(200, seed=1, prefix="mul4-test"))
