"""``agentrl plot``: reward and tool calls per episode over steps, from a run's metrics.jsonl."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; a line cut short (a run killed mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in rows if isinstance(r, dict)]


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


def plot_runs(runs: dict[str, str | Path], out: str | Path, keys=("reward/mean", "rollout/tool_calls_per_episode")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    for label, path in runs.items():
        rows = read_metrics(path)
        for ax, key in zip(axes, keys):
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_cli_args(parser) -> None:
    parser.add_argument("metrics", nargs="+", help="metrics.jsonl files, optionally LABEL=PATH")
    parser.add_argument("--out", default="reward.png")


def cli_main(args) -> int:
    runs = dict(m.split("=", 1) if "=" in m else (Path(m).parent.name, m) for m in args.metrics)
    missing = [path for path in runs.values() if not Path(path).is_file()]
    if missing:
        print(f"error: no metrics file at {', '.join(missing)}", file=sys.stderr)
        return 2
    print(f"wrote {plot_runs(runs, args.out)}")
    print(f"{'run':<20} {'steps':>5} {'reward step1':>12} {'reward first3 -> last10 (rise)':>32} "
          f"{'tool calls first3 -> last10':>28} {'s/step':>7} {'gen s/step':>10}")
    for label, path in runs.items():
        s = summarize(read_metrics(path))
        print(
            f"{label:<20} {s['steps']:>5} {s['reward_step1']:>12.3f} {s['reward_start']:>14.3f} -> {s['reward_end']:.3f}"
            f" ({s['reward_rise']:+.3f}) {s['tool_calls_start']:>17.2f} -> {s['tool_calls_end']:.2f}"
            f" {s['s_per_step']:>7.1f} {s['generation_s_per_step']:>10.1f}"
        )
    return 0
