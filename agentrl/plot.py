"""``agentrl plot RUN_DIR [RUN_DIR ...]``: a run's curves over steps, several runs overlaid.

Panels: reward, accuracy, tool calls per episode, response length, entropy, KL and clip
fraction, read from each run's ``metrics.jsonl``; evaluation points (``eval/<dataset>/<metric>``
keys, logged on some steps) get their own panel and a dotted line at their step on the others.
"""
from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path

# (title, candidate keys): the first key a run logged is plotted (accuracy is "correct" for math
# envs, EM for QA envs; metrics.py strips the leading underscore of hidden components).
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean",)),
    ("accuracy", ("reward/correct", "reward/em", "reward/accuracy")),
    ("tool calls per episode", ("rollout/tool_calls_per_episode",)),
    ("response tokens", ("rollout/response_tokens",)),
    ("entropy", ("train/entropy",)),
    ("KL", ("train/kl",)),
    ("clip fraction", ("train/clip_frac",)),
)
# Interval bounds logged beside an eval metric (``.../avg@4_ci_low``) are not points of their own.
_CI_SUFFIX = re.compile(r"[/_]ci_(low|high)$")


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; a line cut short (a run killed mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), (int, float))]


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that logged a finite number for it."""
    points = [(r["step"], r[key]) for r in rows
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def eval_keys(rows: list[dict]) -> list[str]:
    """``eval/<dataset>/<metric>`` keys in first-seen order, without interval bounds."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k.startswith("eval/") and not _CI_SUFFIX.search(k):
                seen.setdefault(k, None)
    return list(seen)


def panel_key(rows: list[dict], candidates: tuple[str, ...]) -> str | None:
    return next((k for k in candidates if any(k in r for r in rows)), None)


def summarize(rows: list[dict], head: int = 3, tail: int = 10) -> dict:
    """Reward at step 1 (the post-SFT policy, before any update); start (mean of the first
    ``head`` steps), end (mean of the last ``tail`` steps) and rise of reward and tool calls;
    median seconds per step and of generation per step."""
    def mean(key: str, part: list[dict]) -> float:
        values = [r[key] for r in part if key in r]
        return sum(values) / len(values) if values else float("nan")

    def median(key: str) -> float:
        values = sorted(r[key] for r in rows if key in r)
        return values[len(values) // 2] if values else float("nan")

    first, last = rows[:head], rows[-tail:]
    out = {"steps": len(rows), "s_per_step": median("time/step_s"), "generation_s_per_step": median("time/generation_s"),
           "reward_step1": mean("reward/mean", rows[:1])}
    for name, key in (("reward", "reward/mean"), ("tool_calls", "rollout/tool_calls_per_episode")):
        out[f"{name}_start"], out[f"{name}_end"] = mean(key, first), mean(key, last)
        out[f"{name}_rise"] = out[f"{name}_end"] - out[f"{name}_start"]
    return out


def figure(runs: list[tuple[str, list[dict]]]):
    """The panels for ``runs`` ((label, metrics rows) pairs) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    has_eval = any(eval_keys(rows) for _, rows in runs)
    n = len(PANELS) + has_eval
    cols = 4
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(n / cols)), squeeze=False)
    axes = axes.ravel()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    eval_steps = [sorted({r["step"] for r in rows if any(k.startswith("eval/") for k in r)}) for _, rows in runs]
    for ax, (title, candidates) in zip(axes, PANELS):
        drawn = False
        for i, (label, rows) in enumerate(runs):
            key = panel_key(rows, candidates)
            steps, values = series(rows, key) if key else ([], [])
            if steps:
                ax.plot(steps, values, color=colors[i % len(colors)], label=label)
                drawn = True
            for step in eval_steps[i]:
                ax.axvline(step, color=colors[i % len(colors)], linestyle=":", alpha=0.5)
        ax.set_title(title)
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")
    if has_eval:
        ax = axes[len(PANELS)]
        markers = "osD^v<>p*"
        for i, (label, rows) in enumerate(runs):
            for j, key in enumerate(eval_keys(rows)):
                steps, values = series(rows, key)
                ax.plot(steps, values, linestyle=":", marker=markers[j % len(markers)], color=colors[i % len(colors)],
                        label=f"{label}: {key[len('eval/'):]}" if len(runs) > 1 else key[len("eval/"):])
        ax.set_title("eval")
        ax.legend(fontsize="x-small")
    for ax in axes[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def render_png(runs: list[tuple[str, list[dict]]], dpi: int = 100) -> bytes:
    import matplotlib.pyplot as plt

    fig = figure(runs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def plot_runs(runs: dict[str, str | Path] | list[tuple[str, str | Path]], out: str | Path) -> Path:
    """Write the panels for runs given as label -> metrics.jsonl path."""
    items = list(runs.items()) if isinstance(runs, dict) else list(runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_png([(label, read_metrics(path)) for label, path in items], dpi=110))
    return out


def resolve_runs(specs: list[str]) -> list[tuple[str, Path]]:
    """``[LABEL=]PATH`` arguments to (label, metrics.jsonl): PATH is a run folder or the file
    itself; the label defaults to the run folder's name (made unique with its parent's)."""
    runs = []
    for spec in specs:
        # a path may itself hold '=' (run folders named after overrides): an existing path wins
        label, _, path = ("", "", spec) if "=" not in spec or Path(spec).exists() else spec.partition("=")
        path = Path(path)
        metrics = path / "metrics.jsonl" if path.is_dir() else path
        runs.append((label, metrics))
    names = [m.parent.name for _, m in runs]
    return [(label or (name if names.count(name) == 1 else f"{m.parent.parent.name}/{name}"), m)
            for (label, m), name in zip(runs, names)]


def add_cli_args(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (or their metrics.jsonl files), optionally LABEL=PATH")
    parser.add_argument("--out", default="plots.png", help="PNG to write")


def cli_main(args) -> int:
    runs = resolve_runs(args.runs)
    missing = [str(path) for _, path in runs if not path.is_file()]
    if missing:
        print(f"error: no metrics file at {', '.join(missing)}", file=sys.stderr)
        return 2
    print(f"wrote {plot_runs(runs, args.out)}")
    print(f"{'run':<20} {'steps':>5} {'reward step1':>12} {'reward first3 -> last10 (rise)':>32} "
          f"{'tool calls first3 -> last10':>28} {'s/step':>7} {'gen s/step':>10}")
    for label, path in runs:
        s = summarize(read_metrics(path))
        print(
            f"{label:<20} {s['steps']:>5} {s['reward_step1']:>12.3f} {s['reward_start']:>14.3f} -> {s['reward_end']:.3f}"
            f" ({s['reward_rise']:+.3f}) {s['tool_calls_start']:>17.2f} -> {s['tool_calls_end']:.2f}"
            f" {s['s_per_step']:>7.1f} {s['generation_s_per_step']:>10.1f}"
        )
    return 0
