"""Warm-start traces for ``agentrl/ToolUse-v0``: ``python -m agentrl.data.make_tooluse``.

Writes ``kb_tooluse_sft.jsonl.gz``: chat traces (``{"id", "kind", "messages", "tools"}``, the
format of ``agentrl sft`` with ``observation_format: chat``) in the env's exact format: its
system prompt and tool schemas, the question, assistant ``<tool_call>`` turns, tool messages
holding what the real tools return (the env itself plays each trace: BM25 over the knowledge
base, the Python sandbox), then ``<answer>X</answer>``.

The questions are fresh: drawn with ``make_kb``'s own functions and another seed from the
train-split questions that the GRPO data does not use (the warm-start half of ``make_kb``'s
split), minus any question in ``kb_tooluse_train.jsonl``; never a test entity. Half of the
traces call the right tools for their kind (lookup: search; arithmetic: python; both: search,
then python on the year it read), half answer at once, which the tiny model cannot reproduce
for unseen entities and products: GRPO has to find that the tools pay.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from agentrl.data import load_jsonl, write_jsonl
from agentrl.data.make_kb import splits, tooluse_rows

OUT_NAME = "kb_tooluse_sft.jsonl.gz"
N_TRACES = 510
"""A third of each kind: the warm-start half holds about 190 fresh ``both`` questions (organisation x multiplier)."""
TOOL_FRACTION = 0.5
TOPK = 1
"""Passages per search in the traces: configs/tooluse_*_cpu.yaml use the same ``topk``."""


def fresh_tasks(n: int = N_TRACES, seed: int = 0) -> list[dict]:
    """``n`` ToolUse tasks (a third of each kind) that no shipped ToolUse train or test file holds."""
    kb, warm, _, _ = splits(seed)  # the warm-start half, which no ToolUse train or test row draws from
    taken = {r["question"] for name in ("train", "test_lookup", "test_arithmetic", "test_both")
             for r in load_jsonl(f"package:kb_tooluse_{name}.jsonl")}
    rows, seen = [], set(taken)
    for row in tooluse_rows(kb, warm, "sft", 20 * n, seed + 7):  # far more than needed: repeats are dropped
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in ("lookup", "arithmetic", "both")}
    per_kind = n // 3
    if any(len(v) < per_kind for v in by_kind.values()):
        raise ValueError(f"not enough fresh questions for {n} traces: {({k: len(v) for k, v in by_kind.items()})}")
    picked = [r for i in range(per_kind) for r in (by_kind["lookup"][i], by_kind["arithmetic"][i], by_kind["both"][i])]
    return [{**r, "id": f"tooluse-sft-{i}"} for i, r in enumerate(picked)]


def tool_call(name: str, arguments: dict) -> str:
    """A Hermes call as Qwen's template renders one (and as a Qwen model writes it)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def scripted_calls(task: dict, search_output: str | None = None) -> list[tuple[str, dict]]:
    """The right calls for the task's kind; ``both`` multiplies the year the search returned
    (read from the passage, as the model must), so ``search_output`` is needed for its second call.

    The query is the task's entity, the made-up name cut out of the question: the skill
    ``agentrl model init --copy-names`` drills (a question's name into a search call). BM25 ranks
    the entity's paragraph first for every train task."""
    if task["kind"] == "arithmetic":
        return [("python", {"code": f"print({task['a']} * {task['b']})"})]
    calls = [("search", {"query": task["entity"]})]
    if task["kind"] == "lookup":
        return calls
    if search_output is not None:
        year = next(w.rstrip(".") for w in search_output.split() if w.rstrip(".").isdigit())
        calls.append(("python", {"code": f"print({year} * {task['b']})"}))
    return calls


def play(env, task: dict, use_tools: bool) -> list[dict]:
    """Play one trace through the real env; returns the conversation (prompt included)."""
    prompt, _ = env.reset(options={"task": task})
    messages = list(prompt)
    if use_tools:
        done, search_output = 0, None
        while done < len(calls := scripted_calls(task, search_output)):
            name, arguments = calls[done]
            action = tool_call(name, arguments)
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated or info["n_invalid_calls"]:
                raise RuntimeError(f"{task['id']}: the scripted call {action!r} failed: {info}")
            output = info["tool_outputs"][0]
            messages += [{"role": "assistant", "content": action}, {"role": "tool", "content": output}]
            search_output = output if name == "search" else search_output
            done += 1
    answer = f"<answer>{task['answers'][0]}</answer>"
    _, reward, terminated, _, info = env.step(answer)
    if use_tools and (not terminated or reward != 1.0 or not info["reward_components"].get("_right_tools")):
        raise RuntimeError(f"{task['id']}: the scripted episode did not score 1 with the right tools: {info}")
    return messages + [{"role": "assistant", "content": answer}]


def build_traces(n: int = N_TRACES, seed: int = 0, topk: int = TOPK) -> list[dict]:
    from agentrl.envs.tool_use import ToolUseEnv

    tasks = fresh_tasks(n, seed)
    rng = random.Random(seed + 8)
    env = ToolUseEnv(dataset=tasks, topk=topk, max_turns=4)
    try:
        tools = env.tool_schemas
        return [{"id": t["id"], "kind": t["kind"], "messages": play(env, t, rng.random() < TOOL_FRACTION), "tools": tools}
                for t in tasks]
    finally:
        env.close()


def main(out_dir: Path | None = None, seed: int = 0) -> Path:
    out = Path(out_dir or Path(__file__).parent) / OUT_NAME
    write_jsonl(out, build_traces(seed=seed))
    return out


if __name__ == "__main__":
    print(main())
