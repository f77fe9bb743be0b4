"""``agentrl report RUN_DIR --out report.html``: one self-contained HTML page about a run.

What a run folder may hold (each part is optional; a missing one reads "not recorded"):

* ``metrics.jsonl``: one row per training step (``agentrl.metrics``); ``eval/<dataset>/<metric>``
  keys on the steps where the trainer evaluated.
* ``config.yaml``: the resolved config.
* ``trajectories.jsonl``: sampled trajectories, ``agentrl.batch.save_trajectories`` rows with a
  ``step`` key (``agentrl rollout`` output, without ``step``, reads the same).
* ``metrics.json`` + ``samples.jsonl`` (+ ``config.json``): an ``agentrl eval`` output folder
  (layout in ``agentrl/eval/outputs.py``): ``{dataset: {metric: {value, n, ci_low, ci_high}}}``
  and one row per question with its samples. RUN_DIR may be one, or hold them under
  ``RUN_DIR/eval/NAME/`` (``agentrl eval --out RUN_DIR/eval/NAME``; ``eval/step<N>/`` too).

Ids are decoded with the run's tokenizer (``--model``, ``RUN_DIR/model``, the config's
``model.path``, or the latest checkpoint) so each token shows whether it was trained on; without
one the page shows the turn texts the collector recorded. The page itself is built by
:mod:`agentrl.report_page`.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.plot import PANELS, eval_keys, panel_key, read_metrics, series

RUN_FILES = ("metrics.jsonl", "config.yaml", "trajectories.jsonl", "metrics.json", "samples.jsonl", "config.json")


class ReportError(Exception):
    """Bad input the user can fix: the message says what and where."""


@dataclass
class Run:
    path: Path
    config_text: str | None = None
    metrics: list[dict] = field(default_factory=list)
    trajectories: list[tuple[Any, Any]] = field(default_factory=list)
    """(step or None, Trajectory) pairs from trajectories.jsonl."""
    evals: list[tuple[str, dict | None, list[dict]]] = field(default_factory=list)
    """(name, metrics.json, samples.jsonl rows) of each eval folder: RUN_DIR itself, RUN_DIR/eval/*."""
    notes: list[str] = field(default_factory=list)
    """What was skipped while reading (shown on the page, so nothing is dropped silently)."""


def load_run(path: str | Path) -> Run:
    from agentrl.types import Trajectory

    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder")
    eval_dirs = [path] + sorted(d.parent for d in (path / "eval").glob("*/metrics.json"))
    if not any((path / name).is_file() for name in RUN_FILES) and len(eval_dirs) == 1:
        raise ReportError(f"{path} holds none of {', '.join(RUN_FILES)}: not a run or eval folder")
    run = Run(path)
    if (path / "config.yaml").is_file():
        run.config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
    elif (path / "config.json").is_file():  # an eval folder's suite and model
        run.config_text = (path / "config.json").read_text(encoding="utf-8", errors="replace")
    if (path / "metrics.jsonl").is_file():
        run.metrics = read_metrics(path / "metrics.jsonl")
    for row in _jsonl(path / "trajectories.jsonl", run.notes):
        try:
            step = row.pop("step", None)
            run.trajectories.append((step, Trajectory.from_dict(row)))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            run.notes.append(f"trajectories.jsonl: skipped a row that is not a trajectory ({type(e).__name__}: {e})")
    for d in eval_dirs:
        name = "eval" if d == path else d.relative_to(path).as_posix()
        summary, samples = _eval_metrics(d, run.notes), _jsonl(d / "samples.jsonl", run.notes)
        if summary is not None or samples:
            run.evals.append((name, summary, samples))
    return run


def _eval_metrics(folder: Path, notes: list[str]) -> dict | None:
    if not (folder / "metrics.json").is_file():
        return None
    try:
        summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        notes.append(f"{folder.name}/metrics.json: not JSON ({e})")
        return None
    if not isinstance(summary, dict):
        notes.append(f"{folder.name}/metrics.json: expected {{dataset: {{metric: ...}}}}; ignored")
        return None
    return summary


def _jsonl(path: Path, notes: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if bad:
        notes.append(f"{path.name}: skipped {bad} line(s) that are not JSON objects")
    return rows


# -- tokenizer ------------------------------------------------------------------------------
def find_tokenizer_dir(run: Run, model: str | None = None) -> Path | None:
    """``--model`` (which must hold one), else the first folder holding a tokenizer of
    ``RUN_DIR/model``, the config's ``model.path``, the latest checkpoint."""
    if model:
        if not _has_tokenizer(Path(model)):
            raise ReportError(f"--model {model}: no tokenizer there (tokenizer_config.json or tokenizer.json)")
        return Path(model)
    candidates = [run.path / "model"]
    if run.config_text:
        import yaml

        try:
            cfg = yaml.safe_load(run.config_text)
            if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and cfg["model"].get("path"):
                candidates.append(Path(str(cfg["model"]["path"])))
        except yaml.YAMLError:
            run.notes.append("config.yaml: not valid YAML; model.path not read")
    candidates += sorted((run.path / "checkpoints").glob("step_*"), reverse=True)
    return next((c for c in candidates if _has_tokenizer(c)), None)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


# -- what the page shows ----------------------------------------------------------------------
def trajectory_view(t, source: str, tokenizer=None) -> dict:
    """One trajectory for the browser: segments are [trained, text] pairs (trained: loss mask 1)."""
    view = {"source": source, "task": t.task_id, "group": t.group_id, "reward": t.reward,
            "components": t.reward_components, "stop": t.stop_reason.value, "truncated": t.truncated,
            "tool_calls": t.n_tool_calls, "tokens": len(t.input_ids), "trained_tokens": t.n_generated}
    spans = [tuple(s) for s in t.turn_spans]
    exact = (tokenizer is not None and len(spans) == len(t.turns) and len(t.loss_mask) == len(t.input_ids)
             and all(t.prompt_len <= s <= e <= len(t.input_ids) for s, e in spans))
    if exact:  # decode the ids exactly as the trainer saw them, coloured by their loss mask
        ends = [s for s, _ in spans[1:]] + [len(t.input_ids)]
        view["prompt"] = _segments(t.input_ids[: t.prompt_len], t.loss_mask[: t.prompt_len], tokenizer)
        view["decoded"] = True
        turns = [(_segments(t.input_ids[s:e], t.loss_mask[s:e], tokenizer),
                  _segments(t.input_ids[e:nxt], t.loss_mask[e:nxt], tokenizer)) for (s, e), nxt in zip(spans, ends)]
        # a tokenizer from another model decodes the ids to other text than the collector recorded
        view["mismatch"] = any("".join(text for _, text in action) != turn.action
                               for (action, _), turn in zip(turns, t.turns))
    else:  # the collector's turn texts: what was generated and what the environment appended
        view["prompt"] = None
        view["decoded"] = False
        view["prompt_tokens"] = t.prompt_len
        turns = [([[1, turn.action]], [[0, turn.observation]] if turn.observation else []) for turn in t.turns]
    view["turns"] = [{"action": action, "observation": obs, "calls": [_call(c) for c in turn.calls],
                      "tool_latency_s": turn.tool_latency_s, "reward": turn.reward}
                     for (action, obs), turn in zip(turns, t.turns)]
    return view


def _segments(ids: list[int], mask: list[int], tokenizer) -> list[list]:
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or bool(mask[i]) != bool(mask[start]):
            out.append([int(bool(mask[start])), tokenizer.decode(ids[start:i])])
            start = i
    return out


def _call(call) -> dict:
    if not isinstance(call, dict):
        return {"name": "?", "arguments": str(call)}
    args = call.get("arguments", {})
    values = list(args.values()) if isinstance(args, dict) else []
    if len(values) == 1 and isinstance(values[0], str):  # Python code, a search query: read best as they are
        text = values[0]
    else:
        text = json.dumps(args, ensure_ascii=False, indent=1)
    return {"name": str(call.get("name", "?")), "arguments": text}


def eval_sample_views(rows: list[dict], notes: list[str], where: str = "eval") -> list[dict]:
    """``agentrl eval`` samples.jsonl rows (one per question) as browser entries (one per sample)."""
    views = []
    for row in rows:
        samples = row.get("samples")
        if not isinstance(samples, list):
            notes.append(f"samples.jsonl: question {row.get('id', '?')} has no samples list; skipped")
            continue
        for k, s in enumerate(s for s in samples if isinstance(s, dict)):
            turns = [t for t in s.get("turns", []) if isinstance(t, dict)] if isinstance(s.get("turns"), list) else []
            reward = s.get("reward")
            views.append({
                "source": f"{where} {row.get('dataset', '')}".strip(), "task": str(row.get("id", "")), "group": k,
                "reward": reward if isinstance(reward, (int, float)) else float("nan"),
                "components": s.get("components", {}) if isinstance(s.get("components"), dict) else {},
                "stop": str(s.get("stop_reason", "")), "answer": _text(s.get("answer")), "gold": _text(row.get("gold")),
                "tool_calls": sum(len(t.get("calls", [])) for t in turns if isinstance(t.get("calls"), list)),
                "decoded": False, "prompt": [[0, _text(row.get("question"))]],
                "turns": [{"action": [[1, _text(t.get("action", t.get("text")))]],
                           "observation": [[0, _text(t["observation"])]] if t.get("observation") else [],
                           "calls": [_call(c) for c in t.get("calls", []) if isinstance(t.get("calls"), list)],
                           "tool_latency_s": t.get("tool_latency_s"), "reward": t.get("reward")} for t in turns],
            })
    return views


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # QA golds: every accepted answer
        return " | ".join(_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def spread(items: list, n: int) -> list:
    """At most ``n`` items evenly spaced over the list, in order (early and late steps both show)."""
    if n <= 0 or len(items) <= n:
        return list(items) if n > 0 else []
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[-1]]


def metric_rows(rows: list[dict]) -> list[dict]:
    """The training table: each panel's metric plus seconds per step, summarised over steps."""
    out = []
    keys = [panel_key(rows, candidates) for _, candidates in PANELS] + ["time/step_s"]
    for key in [k for k in keys if k]:
        steps, values = series(rows, key)
        if values:
            last = values[-10:]
            out.append({"metric": key, "steps": len(values), "first": values[0], "last": values[-1],
                        "min": min(values), "max": max(values), "last10": sum(last) / len(last)})
    return out


def eval_rows(run: Run) -> list[dict]:
    """One row per (where, dataset, metric): training-time evals by step, then an eval folder's."""
    out = []
    for r in run.metrics:
        for key in eval_keys([r]):
            _, dataset, metric = key.split("/", 2) if key.count("/") >= 2 else (None, "", key[len("eval/"):])
            low, high = (_first(r, [f"{key}_ci_{b}", f"{key}/ci_{b}"]) for b in ("low", "high"))
            out.append({"where": f"step {r['step']}", "dataset": dataset, "metric": metric, "value": r[key],
                        "ci_low": low, "ci_high": high, "n": None, "headline": False})
    for where, summary, _ in run.evals:
        for dataset, metrics in (summary or {}).items():
            for metric, m in (metrics.items() if isinstance(metrics, dict) else []):
                m = m if isinstance(m, dict) else {"value": m}
                out.append({"where": where, "dataset": str(dataset), "metric": str(metric), "value": m.get("value"),
                            "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high"), "n": m.get("n"),
                            "headline": bool(m.get("headline"))})
    return out


def _first(row: dict, keys: list[str]):
    return next((row[k] for k in keys if k in row), None)


def build_report(run_dir: str | Path, model: str | None = None, max_trajectories: int = 200) -> str:
    """The page's HTML for ``run_dir``."""
    from agentrl import report_page
    from agentrl.plot import render_png

    run = load_run(run_dir)
    tokenizer_dir = find_tokenizer_dir(run, model) if run.trajectories else None
    tokenizer = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif run.trajectories:
        run.notes.append("no tokenizer found (--model, RUN_DIR/model, config model.path, checkpoints): "
                         "showing the recorded turn texts, not the decoded ids")
    trajs = [(("rollout" if step is None else f"step {step}"), t) for step, t in run.trajectories]
    picked = spread(trajs, max_trajectories)
    views = [trajectory_view(t, source, tokenizer) for source, t in picked]
    mismatched = sum(v.pop("mismatch", False) for v in views)
    if mismatched:
        run.notes.append(f"the tokenizer in {tokenizer_dir} decodes {mismatched} of {len(views)} trajectories to other "
                         "text than the collector recorded: is it this run's model? (--model sets it)")
    samples = [v for where, _, rows in run.evals for v in eval_sample_views(rows, run.notes, where)]
    room = max(0, max_trajectories - len(views))
    views += spread(samples, room)
    total = len(trajs) + len(samples)
    if len(views) < total:
        run.notes.append(f"showing {len(views)} of {total} trajectories (--max-trajectories {max_trajectories})")
    plot = render_png([(run.path.name, run.metrics)]) if run.metrics else None
    return report_page.render(
        title=f"agentrl report: {run.path.name}", run_path=str(run.path), config_text=run.config_text,
        plot_png=plot, metric_rows=metric_rows(run.metrics), eval_rows=eval_rows(run), trajectories=views,
        tokenizer=str(tokenizer_dir) if tokenizer_dir else None, notes=run.notes, steps=len(run.metrics))


def add_cli_args(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder or an agentrl eval output folder")
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    parser.add_argument("--model", help="tokenizer folder to decode ids (default: found from the run)")
    parser.add_argument("--max-trajectories", type=int, default=200,
                        help="at most this many trajectories in the browser, evenly spread over steps")


def cli_main(args) -> int:
    if args.max_trajectories < 0:
        print("error: --max-trajectories must be >= 0", file=sys.stderr)
        return 2
    try:
        page = build_report(args.run_dir, args.model, args.max_trajectories)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page) / 1e6:.2f} MB)")
    return 0
