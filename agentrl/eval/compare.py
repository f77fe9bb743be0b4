"""``agentrl eval compare RUN_A RUN_B``: two eval runs side by side, with paired bootstrap intervals.

For every dataset both runs have and every metric both report, the table shows A, B, B - A and
the 95% interval of B - A from a paired bootstrap over the questions both runs answered (each
replicate draws one set of questions and scores both runs on it); ``*`` marks a difference whose
interval excludes 0.
"""
from __future__ import annotations

import json

import numpy as np

from agentrl.eval.metrics import paired_bootstrap_diff
from agentrl.eval.outputs import read_run, shown_metrics


def compare_runs(run_a: str, run_b: str, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[dict]:
    """One entry per (dataset, metric): a, b, diff, ci_low, ci_high, significant, n (shared questions)."""
    metrics_a, rows_a, _ = read_run(run_a)
    metrics_b, rows_b, _ = read_run(run_b)
    by_a = {(r["dataset"], r["id"]): r for r in rows_a}
    by_b = {(r["dataset"], r["id"]): r for r in rows_b}
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in rows_a) if d in {r["dataset"] for r in rows_b}]
    if not datasets:
        raise ValueError(f"{run_a} and {run_b} share no dataset")
    out = []
    for ds in datasets:
        keys = [key for key in by_a if key[0] == ds and key in by_b]
        if not keys:
            raise ValueError(f"dataset {ds!r}: the two runs share no question id")
        names = [m for m in shown_metrics(metrics_a.get(ds, {})) if m in metrics_b.get(ds, {})]
        for name in names:
            pairs = [(by_a[key]["scores"].get(name), by_b[key]["scores"].get(name)) for key in keys]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            a = tuple(np.array([p[0][i] for p in pairs], float) for i in (0, 1))
            b = tuple(np.array([p[1][i] for p in pairs], float) for i in (0, 1))
            if not pairs or a[1].sum() <= 0 or b[1].sum() <= 0:
                continue
            diff, lo, hi = paired_bootstrap_diff(a, b, n_boot, seed, alpha)
            out.append({"dataset": ds, "metric": name, "a": float(a[0].sum() / a[1].sum()), "b": float(b[0].sum() / b[1].sum()),
                        "diff": diff, "ci_low": lo, "ci_high": hi, "significant": bool(lo > 0 or hi < 0), "n": len(pairs)})
    return out


def add_cli_args(parser) -> None:
    parser.add_argument("run_a", help="eval run folder (the baseline)")
    parser.add_argument("run_b", help="eval run folder compared against it")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the table as JSON here")


def cli_main(args) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = compare_runs(args.run_a, args.run_b, args.bootstrap, args.seed)
    table = Table(title=f"A = {args.run_a}   B = {args.run_b}")
    for col in ("dataset", "metric", "A", "B", "B - A", "95% CI (paired)", "n", ""):
        table.add_column(col, justify="left" if col in ("dataset", "metric") else "right")
    for r in rows:
        table.add_row(r["dataset"], r["metric"], f"{r['a']:.3f}", f"{r['b']:.3f}", f"{r['diff']:+.3f}",
                      f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", str(r["n"]), "*" if r["significant"] else "")
    Console(width=120).print(table)
    print("* = the paired bootstrap 95% interval of B - A excludes 0")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
