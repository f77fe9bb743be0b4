"""What both sides of ``agentrl bench trainer`` share: the tasks, system prompts and tool schema,
the step measurements, and the supervised warm start the tool variant trains from.

Imported by the worker processes (``trainer_agentrl``, ``trainer_trl``); nothing here imports
torch or TRL at module level.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

TOOL_DOC = "Execute Python code and return what it prints (stdout, then stderr)."


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def steady(step_s: list[float], tokens: list[float]) -> tuple[float, float]:
    """(mean s/step, tokens/s) over steps 2..N (all steps when there are fewer than 2)."""
    s, t = (step_s[1:], tokens[1:]) if len(step_s) > 1 else (step_s, tokens)
    total = sum(s)
    return total / len(s), (sum(t) / total if total > 0 else 0.0)


def bench_tasks(limit: int | None = None) -> list[dict]:
    from agentrl.data import load_jsonl

    return load_jsonl("package:mul4_train.jsonl", limit=limit, require=("question", "answer"))


def system_prompt(variant: str) -> str:
    from agentrl.envs.python_tool import HERMES_SYSTEM_PROMPT, SYSTEM_PROMPT

    return HERMES_SYSTEM_PROMPT if variant == "tool" else SYSTEM_PROMPT


def python_tool_schema() -> dict:
    """agentrl's ``python`` tool schema, which the TRL side's tool function must reproduce."""
    from agentrl.tools import PythonTool, tool_schema

    return tool_schema(PythonTool(None))


def hermes_trace(task: dict) -> list[dict]:
    a, b = task.get("a"), task.get("b")
    code = f"print({a} * {b})" if a is not None else "print(" + task["question"].removeprefix("What is ").rstrip("?") + ")"
    return [
        {"role": "system", "content": system_prompt("tool")},
        {"role": "user", "content": task["question"]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]},
        {"role": "tool", "name": "python", "content": str(task["answer"])},
        {"role": "assistant", "content": f"<answer>{task['answer']}</answer>"},
    ]


def worker_warm(spec: dict, workdir: str) -> dict:
    """Supervised warm start on Hermes traces (call python, read the result, answer), so the
    tool benchmark exercises real multi-turn tool calls on both sides. Cached by input."""
    import hashlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.model import cache_root

    torch.set_num_threads(spec["threads"])
    key = hashlib.sha256(json.dumps([spec["model"], spec["warm_steps"], spec["seed"], 2]).encode()).hexdigest()[:12]
    out = cache_root() / f"bench-warm-{key}"
    meta = out / "warm.json"
    if meta.is_file():
        return {"ok": True, "model": str(out), **json.loads(meta.read_text())}
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tools = [python_tool_schema()]
    seqs = []
    for task in bench_tasks(limit=512):
        msgs = hermes_trace(task)
        prompt = tok.apply_chat_template(msgs[:2], tools=tools, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
        p_ids = tok.encode(prompt, add_special_tokens=False)
        ids = tok.encode(full.rstrip("\n"), add_special_tokens=False)
        seqs.append((ids, len(p_ids)))
    gen = torch.Generator().manual_seed(spec["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    t0 = time.perf_counter()
    loss_v = float("nan")
    for step in range(spec["warm_steps"]):
        idx = torch.randint(len(seqs), (16,), generator=gen).tolist()
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((16, width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((16, width), -100, dtype=torch.long)
        att = torch.zeros((16, width), dtype=torch.long)
        for r, i in enumerate(idx):
            s, p = seqs[i]
            ids[r, : len(s)] = torch.tensor(s)
            att[r, : len(s)] = 1
            labels[r, p : len(s)] = torch.tensor(s[p:])
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        loss_v = loss.item()
    seconds = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".warm-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    info = {"steps": spec["warm_steps"], "loss": loss_v, "seconds": seconds}
    (tmp / "warm.json").write_text(json.dumps(info))
    try:
        os.replace(tmp, out)
    except OSError:  # raced with another writer: theirs is as good
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {"ok": True, "model": str(out), **info}

