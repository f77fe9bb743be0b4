"""The leaderboard of ``agentrl bench algorithms``: rows from the run folders, JSON, Markdown, PNG, table.

Columns, per method (means over the seeds that finished):

- ``reward @25% / @50% / @100%``: the training reward (accuracy of the sampled episodes against the
  gold answer; TTRL's is its gold reward ``reward/gold_correct``, not the pseudo-label reward it
  trains on) averaged over the policy steps whose end falls in the last 10 % of the budget up to
  that point, i.e. cumulative episodes e with f*N - 0.1*N < e <= f*N (with fewer than 10 steps:
  the last step with e <= f*N). Steps are placed at their nominal episodes (step j ends at j x
  tasks x group), so VAPO's value-pretraining steps are left out of the curve.
- ``held-out``: ``agentrl eval`` headline (avg@k on ``mul2_test``) of the final checkpoint, with the
  min-max over seeds; ``vs SFT``: minus the SFT model's, evaluated once with the same k and limit.
- ``SFT train reward`` (JSON, Markdown header): the reward of every run's episodes sampled before its
  first policy update (step 1; VAPO: its pretraining steps too), pooled over runs: all of them come
  from the untouched SFT model on training questions, the same distribution the reward columns
  measure. DAPO's first step is left out: dynamic sampling keeps only groups with mixed rewards.
- ``improves``: ``yes`` when the held-out mean is above the upper end of the SFT eval's 95 %
  bootstrap interval, ``no`` when it is at or below the SFT value, ``within noise`` between.
- ``wall s/run``: mean over seeds of the ``agentrl train`` subprocess wall time (all invocations of
  a resumed run; model loading included, eval excluded).
- ``extra cost``: sampled episodes outside the budget (module docstring of ``agentrl.bench.algorithms``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

FRACTIONS = (0.25, 0.5, 1.0)
WINDOW = 0.1


REWARD_KEYS = ("reward/gold_correct", "reward/correct", "reward/mean")


def reward_key(row: dict) -> str:
    return next(k for k in REWARD_KEYS if k in row)


def _index(plan, row: dict) -> int:
    """The row's step (``agentrl dpo``: iteration; its other optimiser steps' rows carry no rollout)."""
    return int(row["step"] if plan.command == "train" else row["iteration"])


def _rows(plan) -> list[dict]:
    from agentrl.plot import read_metrics

    path = plan.out / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    rows = [r for r in rows if any(k in r for k in REWARD_KEYS) and (plan.command == "train" or "iteration" in r)]
    by_index = {_index(plan, r): r for r in rows}  # a step logged twice (resumed): its last row
    return [by_index[i] for i in sorted(by_index)]


def curve(plan, rows: list[dict]) -> list[tuple[int, float]]:
    """(cumulative budget episodes at the step's end, training reward) of the policy steps."""
    return [((_index(plan, r) - plan.pretrain_steps) * plan.episodes_per_step, float(r[reward_key(r)]))
            for r in rows if _index(plan, r) > plan.pretrain_steps]


def window_mean(points: list[tuple[int, float]], budget: int, fraction: float) -> float | None:
    hi, lo = fraction * budget, (fraction - WINDOW) * budget
    inside = [r for e, r in points if lo < e <= hi + 1e-9]
    if not inside:
        before = [r for e, r in points if e <= hi + 1e-9]
        inside = before[-1:]
    return sum(inside) / len(inside) if inside else None


def pre_update_rewards(plan, rows: list[dict]) -> tuple[float, int]:
    """(reward sum, episodes) of the steps sampled before the first policy update."""
    if "dynamic_sampling=true" in " ".join(plan.overrides):
        return 0.0, 0
    part = [r for r in rows if _index(plan, r) <= plan.pretrain_steps + 1]
    return sum(float(r[reward_key(r)]) for r in part) * plan.episodes_per_step, len(part) * plan.episodes_per_step


def extra_cost(plan, rows: list[dict]) -> dict:
    policy = [r for r in rows if _index(plan, r) > plan.pretrain_steps]
    out = {}
    if any("remax/greedy_tokens" in r for r in rows):
        out["greedy_episodes"] = plan.tasks_per_step * len(policy)
        out["greedy_s"] = sum(r.get("remax/greedy_time_s", 0.0) for r in policy)
    if any(r.get("sampling/tries", 1.0) > 1 or r.get("sampling/dropped_groups", 0.0) > 0 for r in rows):
        out["resampled_episodes"] = int(sum(r.get("sampling/dropped_groups", 0.0) for r in policy)) * plan.group_size
        trained = int(sum(r.get("sampling/groups", plan.tasks_per_step) for r in policy)) * plan.group_size
        out["trained_episodes"] = trained
    if plan.pretrain_steps:
        out["value_pretraining_episodes"] = plan.pretrain_steps * plan.episodes_per_step
    return out


def cost_text(costs: list[dict]) -> str:
    if not costs:
        return ""
    mean = lambda k: sum(c.get(k, 0) for c in costs) / len(costs)  # noqa: E731
    parts = []
    if any("greedy_episodes" in c for c in costs):
        parts.append(f"+{mean('greedy_episodes'):.0f} greedy episodes ({mean('greedy_s'):.0f} s)")
    if any("resampled_episodes" in c for c in costs):
        parts.append(f"+{mean('resampled_episodes'):.0f} episodes in dropped groups; {mean('trained_episodes'):.0f} trained on")
    if any("value_pretraining_episodes" in c for c in costs):
        parts.append(f"+{mean('value_pretraining_episodes'):.0f} episodes of value pretraining")
    return "; ".join(parts)


def heldout(eval_dir: Path) -> dict | None:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        return None
    for dataset, metrics in json.loads(path.read_text()).items():
        for name, m in metrics.items():
            if isinstance(m, dict) and m.get("headline"):
                return {"metric": name, "dataset": dataset, "value": m["value"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]}
    return None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def build(plans, out: Path, sft: Path, args, unavailable: dict[str, str], failures: dict[str, str]) -> dict:
    from agentrl.bench.algorithms import METHODS, run_finished

    budget = args.episodes
    sft_eval = heldout(out / "sft_eval")
    pooled = [0.0, 0]
    methods: dict[str, dict] = {}
    for plan in plans:
        rows = _rows(plan)
        s, n = pre_update_rewards(plan, rows)
        pooled = [pooled[0] + s, pooled[1] + n]
        entry = methods.setdefault(plan.method, {"method": plan.method, "description": METHODS[plan.method].description,
                                                  "recipe": plan.recipe.name, "steps": plan.steps,
                                                  "shape": f"{plan.tasks_per_step} x {plan.group_size}", "runs": []})
        finished = run_finished(plan)
        points = curve(plan, rows)
        wall = json.loads((plan.out / "bench_run.json").read_text())["wall_s"] if (plan.out / "bench_run.json").is_file() \
            else sum(r.get("time/step_s", 0.0) for r in rows)
        entry["runs"].append({"seed": plan.seed, "finished": finished, "dir": str(plan.out), "curve": points,
                              "reward_at": {str(f): window_mean(points, budget, f) for f in FRACTIONS} if finished else {},
                              "heldout": heldout(plan.out / "eval") if finished else None, "wall_s": wall,
                              "extra": extra_cost(plan, rows)})
    sft_train = pooled[0] / pooled[1] if pooled[1] else None
    for entry in methods.values():
        _summarise(entry, sft_eval, sft_train)
    return {"config": {"episodes": budget, "seeds": args.seeds, "sft_model": str(sft), "eval_k": args.eval_k,
                       "eval_limit": args.eval_limit, "window": WINDOW, "fractions": FRACTIONS, "extra_overrides": args.extra,
                       "tasks_per_step": args.tasks_per_step, "group_size": args.group_size},
            "sft": {"heldout": sft_eval, "train_reward": sft_train, "train_reward_episodes": pooled[1]},
            "methods": list(methods.values()), "unavailable": unavailable, "failures": failures}


def _summarise(entry: dict, sft_eval: dict | None, sft_train: float | None) -> None:
    done = [r for r in entry["runs"] if r["finished"]]
    entry["seeds_finished"] = len(done)
    entry["reward_at"] = {f: _mean([r["reward_at"].get(f) for r in done]) for f in map(str, FRACTIONS)}
    values = [r["heldout"]["value"] for r in done if r["heldout"]]
    entry["heldout"] = {"mean": _mean(values), "min": min(values, default=None), "max": max(values, default=None),
                        "seeds": len(values)}
    entry["wall_s"] = _mean([r["wall_s"] for r in done])
    entry["extra_cost"] = cost_text([r["extra"] for r in done if r["extra"]])
    h, final = entry["heldout"]["mean"], entry["reward_at"]["1.0"]
    entry["train_gain"] = final - sft_train if final is not None and sft_train is not None else None
    entry["heldout_gain"] = h - sft_eval["value"] if h is not None and sft_eval else None
    if h is None or not sft_eval:
        entry["improves"] = "n/a"
    elif h > sft_eval["ci_high"]:
        entry["improves"] = "yes"
    elif h <= sft_eval["value"]:
        entry["improves"] = "no"
    else:
        entry["improves"] = "within noise"


# ---------------------------------------------------------------------------------------------- output
COLUMNS = ("method", "reward @25%", "@50%", "@100%", "train vs SFT", "held-out (min-max)", "held-out vs SFT",
           "improves", "wall s/run", "extra cost", "seeds")


def _f(x: float | None, signed: bool = False) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:+.3f}" if signed else f"{x:.3f}")


def table_rows(board: dict) -> list[list[str]]:
    rows = []
    n_seeds = len(board["config"]["seeds"])
    for e in board["methods"]:
        h = e["heldout"]
        held = f"{_f(h['mean'])} ({_f(h['min'])}-{_f(h['max'])})" if h["mean"] is not None else "—"
        rows.append([e["method"], *(_f(e["reward_at"][str(f)]) for f in FRACTIONS), _f(e["train_gain"], True), held,
                     _f(e["heldout_gain"], True), e["improves"], "—" if e["wall_s"] is None else f"{e['wall_s']:.0f}",
                     e["extra_cost"], f"{e['seeds_finished']}/{n_seeds}"])
    for name, why in board["unavailable"].items():
        rows.append([name, "", "", "", "", why, "", "n/a", "", "", f"0/{n_seeds}"])
    return rows


def markdown(board: dict) -> str:
    c, s = board["config"], board["sft"]
    sft_h = s["heldout"]
    lines = [
        "# Leaderboard: RL methods on the CPU multiplication task",
        "",
        f"`agentrl bench algorithms --episodes {c['episodes']} --seeds {' '.join(map(str, c['seeds']))}"
        + (f" --eval-k {c['eval_k']}" if c["eval_k"] else "") + (f" --eval-limit {c['eval_limit']}" if c["eval_limit"] else "")
        + "`: every method from the same SFT model, "
        f"{c['episodes']} sampled trained-on episodes per run, seeds {c['seeds']}; held-out = avg@{c['eval_k']} on "
        f"{c['eval_limit'] or 200} `mul2_test` questions.",
        "",
        f"Post-SFT policy: training reward {_f(s['train_reward'])} (the {s['train_reward_episodes']} episodes sampled before "
        f"any update, pooled over runs), held-out {_f(sft_h and sft_h['value'])} "
        + (f"[{sft_h['ci_low']:.3f}, {sft_h['ci_high']:.3f}]" if sft_h else "") + ".",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(board)]
    lines += ["", "![training reward vs episodes and held-out accuracy per method](leaderboard.png)"]
    lines += ["", "Reward @f: training reward over the steps in the last 10 % of the budget up to f of it; improves: "
              "held-out mean above the SFT eval's 95 % upper bound (yes), at or below the SFT value (no), between "
              "(within noise). Columns are defined in `agentrl/bench/algorithms_report.py`, the budget and the extra "
              "cost in `agentrl/bench/algorithms.py`.", "", "Methods:", ""]
    lines += [f"- `{e['method']}` ({e['recipe']}, {e['shape']}, {e['steps']} steps): {e['description']}" for e in board["methods"]]
    if board["failures"]:
        lines += ["", "Failures:", ""] + [f"- {k}: {v.splitlines()[0]}" for k, v in board["failures"].items()]
    return "\n".join(lines) + "\n"


def plot(board: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = board["config"]["episodes"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#333333", "#999900"]
    names = []
    for i, e in enumerate(board["methods"]):
        done = [r for r in e["runs"] if r["finished"] and r["curve"]]
        if not done:
            continue
        xs = [x for x, _ in done[0]["curve"]]
        smooth = [[window_mean(r["curve"], budget, x / budget) for x in xs] for r in done]
        mean = [sum(v) / len(v) for v in zip(*smooth)]
        color = colors[i % len(colors)]
        ax.plot(xs, mean, color=color, label=e["method"])
        if len(done) > 1:
            ax.fill_between(xs, [min(v) for v in zip(*smooth)], [max(v) for v in zip(*smooth)], color=color, alpha=0.15)
        h = e["heldout"]
        if h["mean"] is not None:
            bx.bar(len(names), h["mean"], color=color, yerr=[[h["mean"] - h["min"]], [h["max"] - h["mean"]]], capsize=3)
            names.append(e["method"])
    s = board["sft"]
    if s["train_reward"] is not None:
        ax.axhline(s["train_reward"], color="gray", linestyle="--", label="post-SFT")
    if s["heldout"]:
        bx.axhline(s["heldout"]["value"], color="gray", linestyle="--", label="post-SFT")
        bx.axhspan(s["heldout"]["ci_low"], s["heldout"]["ci_high"], color="gray", alpha=0.15)
    ax.set(xlabel="sampled (trained-on) episodes", ylabel="training reward (trailing 10 % of budget)",
           title="reward vs episodes: mean over seeds, min-max band")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    bx.set_xticks(range(len(names)), names, rotation=45, ha="right")
    bx.set(ylabel="held-out accuracy", title="held-out mul2_test (min-max over seeds)", ylim=(0, 1.05))
    bx.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(board: dict, out: Path, console) -> None:
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.json").write_text(json.dumps(board, indent=2, default=str))
    (out / "leaderboard.md").write_text(markdown(board))
    plot(board, out / "leaderboard.png")
    c, s = board["config"], board["sft"]
    table = Table(title=f"{c['episodes']} episodes/run, seeds {c['seeds']}; post-SFT train reward {_f(s['train_reward'])}, "
                        f"held-out {_f(s['heldout'] and s['heldout']['value'])}")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("method", "improves", "extra cost") else "right")
    for row in table_rows(board):
        table.add_row(*row)
    console.print(table)
    for k, v in board["failures"].items():
        console.print(f"[red]{k} failed[/red]: {v.splitlines()[0]}")
    console.print(f"written: {out / 'leaderboard.json'}, {out / 'leaderboard.md'}, {out / 'leaderboard.png'}")
