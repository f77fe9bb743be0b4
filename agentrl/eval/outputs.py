"""The eval run folder: what ``agentrl eval`` writes and ``agentrl eval compare`` (and
``agentrl report``) read. This layout is stable; add fields, never rename or remove them.

``samples.jsonl``: one row per question::

    {"id": str, "dataset": str, "kind": "math" | "qa", "question": str,
     "gold": str (math) | [str, ...] (qa),
     "scores": {metric: [num, den]},        # this question's share of every metric (see metrics.py)
     "samples": [                            # the k episodes, in sampling order
        {"answer": str | null,               # the final answer the env parsed (null: none given)
         "scores": {"correct": 0|1, ["em", "f1", "cover_em"]},
         "reward": float, "components": {name: float},   # the env's reward and its components
         "stop_reason": "answer" | "max_turns" | "max_tokens" | "no_action" | "error",
         "response_tokens": int,
         "turns": [{"text": str,             # what the model wrote this turn
                    "calls": [{"name", "arguments"}], "observation": str,   # tool calls, env reply
                    "tool_latency_s": float, "n_parse_errors": int,   # malformed calls
                    "n_invalid_calls": int}]}]}                      # malformed + unknown tools + no action

``metrics.json``: ``{dataset: {metric: {"value", "n", "ci_low", "ci_high"}}}``; the headline
metric of each dataset (math ``avg@k``, QA ``em``) also has ``"headline": true``. ``n`` is what
the value averages over (questions; tool calls or tool turns for ``tool_latency_s`` and
``tool_error_rate``); ``ci_low``/``ci_high`` bound the bootstrap 95% interval (questions
resampled). With several datasets, ``"average"`` holds the unweighted mean over datasets.

``report.md``: one table per dataset. ``config.json``: the suite, the model / engine and timing.
"""
from __future__ import annotations

import json
from pathlib import Path

SAMPLES, METRICS, REPORT, CONFIG = "samples.jsonl", "metrics.json", "report.md", "config.json"


def shown_metrics(metrics: dict) -> list[str]:
    """Metrics a table shows: pass@j only for j a power of two or k (metrics.json has them all)."""
    names = []
    for name in metrics:
        if name.startswith("pass@"):
            j, k = int(name[5:]), max(int(m[5:]) for m in metrics if m.startswith("pass@"))
            if j & (j - 1) and j != k:
                continue
        names.append(name)
    return names


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 10 else f"{x:.3f}"


def render_report(metrics: dict, info: dict) -> str:
    lines = [f"# Eval {info.get('name', '')}".rstrip(), ""]
    facts = [f"{k}: {info[k]}" for k in ("model", "engine", "k", "temperature", "top_p", "questions", "seconds") if k in info]
    lines += [", ".join(facts), ""] if facts else []
    for dataset, ms in metrics.items():
        head = next((m for m, v in ms.items() if v.get("headline")), None)
        title = f"## {dataset}" + (f" ({head} {_fmt(ms[head]['value'])})" if head else "")
        lines += [title, "", "| metric | value | 95% CI | n |", "|---|---|---|---|"]
        for name in shown_metrics(ms):
            m = ms[name]
            label = f"**{name}**" if m.get("headline") else name
            lines.append(f"| {label} | {_fmt(m['value'])} | [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] | {m['n']} |")
        lines.append("")
    return "\n".join(lines)


def write_run(out_dir: str | Path, result, suite) -> Path:
    """Write the four files; samples first, so a folder with metrics.json is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / SAMPLES, "w", encoding="utf-8") as f:
        for row in result.rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    info = {"name": suite.name, "temperature": suite.temperature, "top_p": suite.top_p, **result.info}
    (out / CONFIG).write_text(json.dumps({"suite": suite.model_dump(mode="json"), "info": info}, indent=2))
    (out / REPORT).write_text(render_report(result.metrics, info))
    (out / METRICS).write_text(json.dumps(result.metrics, indent=2))
    return out


def read_run(run_dir: str | Path) -> tuple[dict, list[dict], dict]:
    """``(metrics, rows, config)`` of a run folder, with clear errors for what is missing."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"eval run folder not found: {d}")
    for name in (SAMPLES, METRICS):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d} has no {name}: not a finished `agentrl eval` run folder")
    try:
        metrics = json.loads((d / METRICS).read_text())
        rows = [json.loads(line) for line in (d / SAMPLES).read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{d}: a file is not valid JSON ({e.msg} at line {e.lineno})") from None
    config = json.loads((d / CONFIG).read_text()) if (d / CONFIG).is_file() else {}
    return metrics, rows, config
