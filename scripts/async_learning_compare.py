"""Sync against async rollouts on the same runs: reward per sampled episode and wall time.

    python scripts/async_learning_compare.py runs/async_learning [--out docs/async_learning.png]

Reads ``ROOT/seed*/{sync,async}/metrics.jsonl`` (``agentrl train ... rollout.mode=sync|async``
from the same SFT model and seed), prints a table, writes ``ROOT/compare.json`` and a figure:
reward per step and reward against wall-clock seconds, one line per run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from agentrl.plot import read_metrics  # noqa: E402

MODES = ("sync", "async")


def summary(rows: list[dict]) -> dict:
    reward = [r["reward/mean"] for r in rows]
    return {
        "steps": len(rows),
        "reward_first3": statistics.mean(reward[:3]),
        "reward_last10": statistics.mean(reward[-10:]),
        "reward_mean_all_steps": statistics.mean(reward),  # = reward per sampled episode (same episodes per step)
        "train_wall_s": sum(r["time/step_s"] for r in rows),
        "s_per_step": statistics.mean(r["time/step_s"] for r in rows[1:] or rows),
        "wait_rollout_s": statistics.mean(r.get("time/wait_rollout_s", 0.0) for r in rows[1:] or rows),
        "training_s": statistics.mean(r["time/training_s"] for r in rows[1:] or rows),
        "staleness_mean": statistics.mean(r.get("async/staleness_mean", 0.0) for r in rows),
        "tool_calls_last10": statistics.mean(r.get("rollout/tool_calls_per_episode", 0.0) for r in rows[-10:]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--out", default=None, help="PNG (default ROOT/compare.png)")
    args = parser.parse_args()
    root = Path(args.root)
    runs = {}
    for seed_dir in sorted(root.glob("seed*")):
        for mode in MODES:
            path = seed_dir / mode / "metrics.jsonl"
            if path.is_file():
                runs[(seed_dir.name, mode)] = read_metrics(path)
    if not runs:
        raise SystemExit(f"no {root}/seed*/{{sync,async}}/metrics.jsonl")
    table = {f"{seed}/{mode}": summary(rows) for (seed, mode), rows in runs.items()}
    cols = ("steps", "reward_first3", "reward_last10", "reward_mean_all_steps", "train_wall_s", "s_per_step",
            "wait_rollout_s", "training_s", "staleness_mean", "tool_calls_last10")
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, s in table.items():
        print(f"| {name} | " + " | ".join(f"{s[c]:.3f}" if isinstance(s[c], float) else str(s[c]) for c in cols) + " |")
    ratios = {}
    for seed in sorted({seed for seed, _ in runs}):
        a, b = table.get(f"{seed}/async"), table.get(f"{seed}/sync")
        if a and b:
            ratios[seed] = {"train_wall_async_over_sync": a["train_wall_s"] / b["train_wall_s"],
                            "reward_mean_async_minus_sync": a["reward_mean_all_steps"] - b["reward_mean_all_steps"],
                            "reward_last10_async_minus_sync": a["reward_last10"] - b["reward_last10"]}
            print(f"{seed}: async / sync wall {ratios[seed]['train_wall_async_over_sync']:.2f}x, reward per episode "
                  f"{ratios[seed]['reward_mean_async_minus_sync']:+.3f}, last 10 steps "
                  f"{ratios[seed]['reward_last10_async_minus_sync']:+.3f}")
    (root / "compare.json").write_text(json.dumps({"runs": table, "per_seed": ratios}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"sync": "tab:blue", "async": "tab:orange"}
    for (seed, mode), rows in runs.items():
        reward = [r["reward/mean"] for r in rows]
        wall, t = [], 0.0
        for r in rows:
            t += r["time/step_s"]
            wall.append(t)
        label = f"{mode} {seed}"
        ax1.plot([r["step"] for r in rows], reward, color=colors[mode], alpha=0.75, label=label)
        ax2.plot(wall, reward, color=colors[mode], alpha=0.75, label=label)
    ax1.set(xlabel="step", ylabel="reward per sampled episode", title="reward by step")
    ax2.set(xlabel="training wall-clock s (sum of time/step_s)", ylabel="reward", title="reward by wall time")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(args.out) if args.out else root / "compare.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out} and {root / 'compare.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
