"""``agentrl plot``: reward and tool calls per episode over steps, from a run's metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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
    axes[0].legend()
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
    print(f"wrote {plot_runs(runs, args.out)}")
    return 0
