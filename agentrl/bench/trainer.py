"""``agentrl bench trainer``: agentrl's GRPO against TRL's ``GRPOTrainer``, side by side.

Both frameworks train the same model on the same multiplication tasks (``mul4_train.jsonl``)
with the same group size, prompts per step, token budget, learning rate, temperature and
number of steps, once single-turn and once with a Python tool (Hermes ``<tool_call>`` format,
both sides executing code in the same ``agentrl.sandbox`` local sandbox). Every run is a fresh
subprocess (``python -m agentrl.bench.trainer --worker ...``), one after the other, so memory
peaks (``ru_maxrss``) do not mix and both pay the same import / thread state.

``agentrl_async`` is the same agentrl run with ``rollout.mode: async`` (``max_staleness: 1``): a
worker process samples batch t+1 while the trainer updates on batch t (docs/async_rollouts.md);
the table gives its time per step against the sync run's.

Seconds per step exclude model loading and trainer construction: agentrl reports per-step
``time/step_s``; TRL is timed by a ``TrainerCallback`` from ``on_step_begin`` to ``on_step_end``
(generation, reward, loss, backward and optimiser step are all inside). The first step is a
warm-up and is reported separately; the steady figures are over the remaining steps.
Tokens/s = model-generated completion tokens (tool output excluded) / step time.

TRL is not a dependency of agentrl; install it for the benchmark only (see
``bench-requirements.txt``)::

    pip install -r bench-requirements.txt --constraint <(printf 'torch==2.13.0\\n')
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentrl.bench.memory import TreeMemory

INSTALL_HINT = "pip install -r bench-requirements.txt  (pins trl==1.16.0; keep torch: add --constraint <(echo torch==2.13.0))"
VARIANTS = ("single", "tool")
FRAMEWORKS = ("agentrl", "agentrl_async", "trl")  # agentrl_async: rollout.mode: async (docs/async_rollouts.md)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per run (first one is warm-up)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (TRL num_generations)")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimiser step (agentrl tasks_per_step)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="agentrl max_new_tokens_per_turn; TRL max_completion_length (x max turns for the tool variant)")
    parser.add_argument("--max-turns", type=int, default=3, help="tool variant: generation rounds per episode")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--model", default=None, help="model dir (default: agentrl's own model of --size, built once)")
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny",
                        help="without --model: the size of agentrl's self-built model (agentrl model init --size)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every run (both frameworks; generation and training)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                        help="agentrl_async: agentrl with rollout.mode: async, max_staleness 1")
    parser.add_argument("--warm-start-steps", type=int, default=150,
                        help="tool variant: supervised steps on Hermes tool-call traces before benchmarking, so both "
                             "frameworks actually call the tool (a random model never emits a parseable call); 0 = off")
    parser.add_argument("--warm-start-lr", type=float, default=None,
                        help="tool variant: peak learning rate of the warm start (10%% warm-up, cosine to a tenth); "
                             "default: 3e-3 for --size tiny, 1e-3 for small or a --model")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each framework this many times, alternating agentrl/TRL; the fastest run of each is "
                             "reported (all runs are in the JSON) -- use >1 on a shared, noisy machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                        help="activation checkpointing in both frameworks (on = TRL GRPOConfig's default; agentrl's "
                             "optim.gradient_checkpointing defaults to off)")
    parser.add_argument("--out", default="bench_trainer.json", help="JSON results file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess run")


def cli_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    model = str(Path(args.model).resolve()) if args.model else None
    if model is None:
        from agentrl.model import cached_tiny_model

        model = str(cached_tiny_model(args.size))
    trl_version, trl_error = _trl_status()
    frameworks = list(args.frameworks)
    notes: list[str] = []
    if "trl" in frameworks and trl_error:
        notes.append(f"TRL not available ({trl_error}); install it with: {INSTALL_HINT}")
        frameworks = [f for f in frameworks if f != "trl"]

    base = dict(steps=args.steps, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                max_new_tokens=args.max_new_tokens, max_turns=args.max_turns, lr=args.lr, threads=args.threads,
                seed=args.seed, gradient_checkpointing=args.gradient_checkpointing == "on")
    results: list[dict] = []
    models = {"single": model}
    for variant in args.variants:
        if variant == "tool" and args.warm_start_steps > 0:
            console.print(f"[dim]tool variant: warm-starting the model on Hermes tool-call traces ({args.warm_start_steps} steps)...[/dim]")
            warm = _run_worker("warm", dict(base, model=model, warm_steps=args.warm_start_steps, warm_lr=args.warm_start_lr or _warm_lr(args)), args.timeout)
            if not warm.get("ok"):
                notes.append(f"warm start failed, tool variant uses the base model: {warm.get('error')}")
                models["tool"] = model
            else:
                models["tool"] = warm["model"]
                notes.append(f"tool variant model: {warm['model']} ({warm['steps']} SFT steps on Hermes traces, "
                             f"final loss {warm['loss']:.3f}, {warm['seconds']:.0f}s; cached)")
        models.setdefault(variant, model)
        runs: dict[str, list[dict]] = {fw: [] for fw in frameworks}
        for rep in range(max(1, args.repeats)):
            for fw in frameworks:
                spec = dict(base, model=models[variant], variant=variant)
                console.print(f"[dim]running {fw} / {variant} (run {rep + 1}/{max(1, args.repeats)}) ...[/dim]")
                res = _run_worker(fw, spec, args.timeout)
                res.update(framework=fw, variant=variant)
                runs[fw].append(res)
                if not res.get("ok"):
                    console.print(f"[red]{fw} / {variant} failed:[/red] {res.get('error')}")
        for fw in frameworks:
            ok = [r for r in runs[fw] if r.get("ok")]
            best = dict(min(ok, key=lambda r: r["s_per_step"]) if ok else runs[fw][-1])
            best["all_runs_s_per_step"] = [r.get("s_per_step") for r in runs[fw]]
            if len(runs[fw]) > 1:
                best["all_runs"] = runs[fw]
            results.append(best)

    report = {"config": dict(base, model=model, models=models, variants=args.variants, repeats=args.repeats),
              "versions": _versions(trl_version), "results": results, "ratios": _ratios(results),
              "async_ratios": _async_ratios(results), "notes": notes}
    _print_table(console, report)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    console.print(f"results written to {args.out}")
    return 0 if results and all(r.get("ok") for r in results) else 1


def _trl_status() -> tuple[str | None, str | None]:
    try:
        import importlib.metadata as md

        version = md.version("trl")
    except Exception:
        return None, "trl is not installed"
    return version, None


def _versions(trl_version: str | None) -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "trl": trl_version}
    for pkg in ("torch", "transformers", "accelerate", "agentrl"):
        try:
            out[pkg] = md.version(pkg)
        except Exception:
            out[pkg] = None
    return out


def _warm_lr(args: argparse.Namespace) -> float:
    """The warm start's default peak lr: 3e-3 teaches the tiny model the call format in 150 steps
    (1e-3: 0.2 calls per episode against ~1), but leaves the 25M small model emitting garbled
    JSON, which 1e-3 does not; a model of the user's gets the safer 1e-3."""
    return 3e-3 if args.model is None and args.size == "tiny" else 1e-3


def _run_worker(kind: str, spec: dict, timeout: float) -> dict:
    """One run in a fresh interpreter; the worker writes its result JSON to a file."""
    with tempfile.TemporaryDirectory(prefix="agentrl-bench-trainer-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ)
        threads = str(spec["threads"])
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
                   TRL_EXPERIMENTAL_SILENCE="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, "-m", "agentrl.bench.trainer", "--worker", kind, "--spec", json.dumps(spec),
               "--result", str(result), "--workdir", tmp]
        t0 = time.perf_counter()
        # the warm start is long (minutes) and prints its progress: let it reach the terminal
        stderr_to = None if kind == "warm" else subprocess.PIPE
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr_to, text=True)
        with TreeMemory(proc.pid) as memory:  # the run's whole tree: sandbox children, the async rollout worker
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return {"ok": False, "error": f"timed out after {timeout:.0f}s"}
        wall = time.perf_counter() - t0
        if result.is_file():
            out = json.loads(result.read_text())
            out.update(wall_s=wall, peak_tree_pss_mb=memory.peak_mb, peak_tree_processes=memory.peak_processes)
            return out
        tail = "\n".join((stderr or stdout or "").strip().splitlines()[-15:])
        return {"ok": False, "error": f"worker exited {proc.returncode}:\n{tail}", "wall_s": wall}


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
TARGETS = {"agentrl": 1.0, "agentrl_async": 0.6}  # time per step as a fraction of TRL's


def _ratios(results: list[dict]) -> dict:
    """Per variant, each agentrl framework against TRL: ``{variant: {framework: {...}}}``. Memory
    is compared on the whole process tree (PSS: the sandbox children and the async rollout worker
    included) where both runs have it, else on the training process's peak RSS."""
    out: dict = {}
    by = {(r["variant"], r["framework"]): r for r in results if r.get("ok")}
    for variant in VARIANTS:
        t = by.get((variant, "trl"))
        for fw, target in TARGETS.items():
            a = by.get((variant, fw))
            if not (a and t):
                continue
            mem = "peak_tree_pss_mb" if a.get("peak_tree_pss_mb") and t.get("peak_tree_pss_mb") else "peak_rss_mb"
            x = a["s_per_step"] / t["s_per_step"]
            out.setdefault(variant, {})[fw] = {
                "s_per_step_over_trl": x,
                "cpu_s_per_step_over_trl": a["cpu_s_per_step"] / max(t["cpu_s_per_step"], 1e-9),
                "tokens_per_s_over_trl": a["tokens_per_s"] / max(t["tokens_per_s"], 1e-9),
                "peak_memory_over_trl": a[mem] / t[mem], "peak_memory_measure": mem,
                "target_s_per_step_over_trl": target, "meets_time_target": x <= target,
                "meets_memory_target": a[mem] <= t[mem],
            }
    return out


def _async_ratios(results: list[dict]) -> dict:
    """Per variant: agentrl's async rollouts against its sync ones, the same run otherwise."""
    by = {(r["variant"], r["framework"]): r for r in results if r.get("ok")}
    out = {}
    for variant in VARIANTS:
        a, s = by.get((variant, "agentrl_async")), by.get((variant, "agentrl"))
        if a and s:
            out[variant] = {"s_per_step_async_over_sync": a["s_per_step"] / s["s_per_step"],
                            "tokens_per_s_async_over_sync": a["tokens_per_s"] / max(s["tokens_per_s"], 1e-9)}
    return out


def _print_table(console, report: dict) -> None:
    from rich.table import Table

    cfg = report["config"]
    title = (f"GRPO trainer: {cfg['prompts_per_step']} prompts x {cfg['group_size']} completions/step, "
             f"{cfg['max_new_tokens']} new tokens/turn, {cfg['steps']} steps, torch threads {cfg['threads']}")
    table = Table(title=title)
    for col in ("variant", "framework", "s/step", "CPU s/step", "1st step s", "tokens/s", "gen tok/episode", "tool calls/ep",
                "reward", "peak RSS MB", "tree PSS MB", "startup s", "x TRL s/step", "x TRL memory", "x sync s/step"):
        table.add_column(col, justify="left" if col in ("variant", "framework") else "right")
    ratios = report["ratios"]
    for r in report["results"]:
        if not r.get("ok"):
            table.add_row(r["variant"], r["framework"], "failed", *[""] * 13)
            continue
        ratio = memory = ""
        x = ratios.get(r["variant"], {}).get(r["framework"])
        if x:
            ratio = f"[{'green' if x['meets_time_target'] else 'red'}]{x['s_per_step_over_trl']:.2f}x[/]"
            memory = f"[{'green' if x['meets_memory_target'] else 'red'}]{x['peak_memory_over_trl']:.2f}x[/]"
        elif r["framework"] == "trl" and r["variant"] in ratios:
            ratio = memory = "1.00x"
        async_ratio = ""
        if r["variant"] in report.get("async_ratios", {}) and r["framework"] in ("agentrl", "agentrl_async"):
            x = report["async_ratios"][r["variant"]]["s_per_step_async_over_sync"] if r["framework"] == "agentrl_async" else 1.0
            async_ratio = f"{x:.2f}x"
        table.add_row(r["variant"], r["framework"], f"{r['s_per_step']:.3f}", f"{r['cpu_s_per_step']:.3f}", f"{r['first_step_s']:.3f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['gen_tokens_per_episode']:.1f}",
                      f"{r['tool_calls_per_episode']:.2f}", f"{r['reward_mean']:.3f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r.get('peak_tree_pss_mb', 0):.0f}", f"{r['startup_s']:.1f}", ratio, memory, async_ratio)
    console.print(table)
    v = report["versions"]
    console.print(f"[dim]torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, accelerate {v['accelerate']}; "
                  f"s/step (wall), CPU s/step (process CPU time) and tokens/s over steps 2..N (step 1 = warm-up); "
                  f"best of {cfg.get('repeats', 1)} run(s) each; peak RSS = ru_maxrss of the training "
                  f"process alone; tree PSS = peak of the summed proportional set size of the run's whole process "
                  f"tree (sandbox children, async rollout worker; shared pages counted once), which the memory "
                  f"ratio compares[/dim]")
    for r in report["results"]:
        for note in r.get("notes", []):
            console.print(f"[yellow]{r['framework']}/{r['variant']}:[/yellow] {note}")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    for variant, x in report.get("async_ratios", {}).items():
        console.print(f"{variant}: agentrl async rollouts take {x['s_per_step_async_over_sync']:.2f}x the sync time per step")
    for variant, per in ratios.items():
        for fw, x in per.items():
            verdict = "meets" if x["meets_time_target"] else "MISSES"
            console.print(f"{variant}: {fw} {x['s_per_step_over_trl']:.2f}x TRL's time per step "
                          f"({x['cpu_s_per_step_over_trl']:.2f}x its CPU time) -> {verdict} the "
                          f"<={x['target_s_per_step_over_trl']:.1f}x target; memory {x['peak_memory_over_trl']:.2f}x "
                          f"TRL's ({x['peak_memory_measure']}) -> {'meets' if x['meets_memory_target'] else 'MISSES'} <=1.0x")


# ---------------------------------------------------------------------------------------------
# Worker entry point (``python -m agentrl.bench.trainer --worker KIND``)
# ---------------------------------------------------------------------------------------------
# kind -> "module:function"; imported in the worker only, so the parent never loads torch or TRL
WORKERS = {"agentrl": "agentrl.bench.trainer_agentrl:worker_agentrl",
           "agentrl_async": "agentrl.bench.trainer_agentrl:worker_agentrl_async",
           "trl": "agentrl.bench.trainer_trl:worker_trl",
           "warm": "agentrl.bench.trainer_common:worker_warm"}


def _worker(kind: str):
    module, _, name = WORKERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentrl.bench.trainer")
    p.add_argument("--worker", choices=sorted(WORKERS), required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--workdir", required=True)
    a = p.parse_args(argv)
    import logging
    import traceback

    logging.basicConfig(level=logging.WARNING)
    try:
        res = _worker(a.worker)(json.loads(a.spec), a.workdir)
    except Exception as e:
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    Path(a.result).write_text(json.dumps(res, default=str))
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
