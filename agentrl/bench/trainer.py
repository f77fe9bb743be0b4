"""``agentrl bench trainer``: agentrl's GRPO against TRL's ``GRPOTrainer``, side by side.

Both frameworks train the same model on the same multiplication tasks (``mul4_train.jsonl``)
with the same group size, prompts per step, token budget, learning rate, temperature and
number of steps, once single-turn and once with a Python tool (Hermes ``<tool_call>`` format,
both sides executing code in the same ``agentrl.sandbox`` local sandbox). Every run is a fresh
subprocess (``python -m agentrl.bench.trainer --worker ...``), one after the other, so memory
peaks (``ru_maxrss``) do not mix and both pay the same import / thread state.

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
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "pip install -r bench-requirements.txt  (pins trl==1.16.0; keep torch: add --constraint <(echo torch==2.13.0))"
VARIANTS = ("single", "tool")
FRAMEWORKS = ("agentrl", "trl")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
TOOL_DOC = "Execute Python code and return what it prints (stdout, then stderr)."


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
    parser.add_argument("--model", default=None, help="model dir (default: agentrl.model.cached_tiny_model())")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every run (both frameworks; generation and training)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--warm-start-steps", type=int, default=150,
                        help="tool variant: supervised steps on Hermes tool-call traces before benchmarking, so both "
                             "frameworks actually call the tool (a random model never emits a parseable call); 0 = off")
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

        model = str(cached_tiny_model())
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
            warm = _run_worker("warm", dict(base, model=model, warm_steps=args.warm_start_steps), args.timeout)
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
              "versions": _versions(trl_version), "results": results, "ratios": _ratios(results), "notes": notes}
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
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f}s"}
        wall = time.perf_counter() - t0
        if result.is_file():
            out = json.loads(result.read_text())
            out["wall_s"] = wall
            return out
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        return {"ok": False, "error": f"worker exited {proc.returncode}:\n{tail}", "wall_s": wall}


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def _ratios(results: list[dict]) -> dict:
    out = {}
    by = {(r["variant"], r["framework"]): r for r in results if r.get("ok")}
    for variant in VARIANTS:
        a, t = by.get((variant, "agentrl")), by.get((variant, "trl"))
        if a and t:
            out[variant] = {
                "s_per_step_agentrl_over_trl": a["s_per_step"] / t["s_per_step"],
                "tokens_per_s_agentrl_over_trl": a["tokens_per_s"] / max(t["tokens_per_s"], 1e-9),
                "peak_rss_agentrl_over_trl": a["peak_rss_mb"] / t["peak_rss_mb"],
                "cpu_s_per_step_agentrl_over_trl": a["cpu_s_per_step"] / max(t["cpu_s_per_step"], 1e-9),
                "meets_target_1x": a["s_per_step"] <= t["s_per_step"],
            }
    return out


def _print_table(console, report: dict) -> None:
    from rich.table import Table

    cfg = report["config"]
    title = (f"GRPO trainer: {cfg['prompts_per_step']} prompts x {cfg['group_size']} completions/step, "
             f"{cfg['max_new_tokens']} new tokens/turn, {cfg['steps']} steps, torch threads {cfg['threads']}")
    table = Table(title=title)
    for col in ("variant", "framework", "s/step", "CPU s/step", "1st step s", "tokens/s", "gen tok/episode", "tool calls/ep",
                "reward", "peak RSS MB", "startup s", "x TRL s/step"):
        table.add_column(col, justify="left" if col in ("variant", "framework") else "right")
    ratios = report["ratios"]
    for r in report["results"]:
        if not r.get("ok"):
            table.add_row(r["variant"], r["framework"], "failed", *[""] * 9)
            continue
        ratio = ""
        if r["framework"] == "agentrl" and r["variant"] in ratios:
            x = ratios[r["variant"]]["s_per_step_agentrl_over_trl"]
            ratio = f"[{'green' if x <= 1.0 else 'red'}]{x:.2f}x[/]"
        elif r["framework"] == "trl" and r["variant"] in ratios:
            ratio = "1.00x"
        table.add_row(r["variant"], r["framework"], f"{r['s_per_step']:.3f}", f"{r['cpu_s_per_step']:.3f}", f"{r['first_step_s']:.3f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['gen_tokens_per_episode']:.1f}",
                      f"{r['tool_calls_per_episode']:.2f}", f"{r['reward_mean']:.3f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['startup_s']:.1f}", ratio)
    console.print(table)
    v = report["versions"]
    console.print(f"[dim]torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, accelerate {v['accelerate']}; "
                  f"s/step (wall), CPU s/step (process CPU time) and tokens/s over steps 2..N (step 1 = warm-up); "
                  f"best of {cfg.get('repeats', 1)} run(s) each; peak RSS = ru_maxrss of the training "
                  f"process (sandbox children excluded)[/dim]")
    for r in report["results"]:
        for note in r.get("notes", []):
            console.print(f"[yellow]{r['framework']}/{r['variant']}:[/yellow] {note}")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    for variant, x in ratios.items():
        verdict = "meets" if x["meets_target_1x"] else "MISSES"
        console.print(f"{variant}: agentrl {x['s_per_step_agentrl_over_trl']:.2f}x TRL's time per step "
                      f"({x['cpu_s_per_step_agentrl_over_trl']:.2f}x its CPU time) -> {verdict} the <=1.0x target")


# ---------------------------------------------------------------------------------------------
# Workers (run in their own process)
# ---------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _steady(step_s: list[float], tokens: list[float]) -> tuple[float, float]:
    """(mean s/step, tokens/s) over steps 2..N (all steps when there are fewer than 2)."""
    s, t = (step_s[1:], tokens[1:]) if len(step_s) > 1 else (step_s, tokens)
    total = sum(s)
    return total / len(s), (sum(t) / total if total > 0 else 0.0)


def _tasks(limit: int | None = None) -> list[dict]:
    from agentrl.data import load_jsonl

    return load_jsonl("package:mul4_train.jsonl", limit=limit, require=("question", "answer"))


def _system_prompt(variant: str) -> str:
    from agentrl.envs.python_tool import HERMES_SYSTEM_PROMPT, SYSTEM_PROMPT

    return HERMES_SYSTEM_PROMPT if variant == "tool" else SYSTEM_PROMPT


def _tool_schema() -> dict:
    from agentrl.tools import PythonTool, tool_schema

    return tool_schema(PythonTool(None))


def worker_agentrl(spec: dict, workdir: str) -> dict:
    import torch

    from agentrl.config import parse_config
    from agentrl.trainer import GRPOTrainer

    torch.set_num_threads(spec["threads"])
    tool = spec["variant"] == "tool"
    kwargs = {"max_turns": spec["max_turns"], "tool_format": "hermes"} if tool else {"max_turns": 1, "tool_enabled": False}
    tree = {
        "run": {"name": "bench", "output_dir": str(Path(workdir) / "agentrl"), "seed": spec["seed"], "steps": spec["steps"],
                "save_every": spec["steps"] + 1, "tensorboard": False, "progress": False},
        "model": {"path": spec["model"], "init_if_missing": None},
        "env": {"id": "agentrl/PythonTool-v0", "kwargs": kwargs},
        "rollout": {"tasks_per_step": spec["prompts_per_step"], "group_size": spec["group_size"],
                    "max_new_tokens_per_turn": spec["max_new_tokens"], "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                    "num_threads": spec["threads"]},
        "algorithm": {"kl_coef": 0.0, "epochs": 1, "minibatches": 1},
        "optim": {"lr": spec["lr"], "micro_batch_size": spec["prompts_per_step"] * spec["group_size"],
                  "gradient_checkpointing": spec.get("gradient_checkpointing", True),
                  "schedule": "constant", "warmup_steps": 0, "grad_clip": 1.0},
        "guard": {"enabled": False},  # TRL has no collapse guard
    }
    cfg = parse_config(tree)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(cfg)
    startup = time.perf_counter() - t0
    cpu_s: list[float] = []
    train_step = trainer.train_step

    def timed_step():  # process CPU time per step: robust to other load on the machine
        c = time.process_time()
        record = train_step()
        cpu_s.append(time.process_time() - c)
        return record

    trainer.train_step = timed_step
    try:
        history = trainer.train()
    finally:
        trainer.close()
    n_ep = spec["prompts_per_step"] * spec["group_size"]
    step_s = [h["time/step_s"] for h in history]
    tokens = [h.get("rollout/response_tokens", 0.0) * h.get("sampling/groups", spec["prompts_per_step"]) * spec["group_size"]
              for h in history]
    s_per_step, tps = _steady(step_s, tokens)
    cpu_per_step = _steady(cpu_s, cpu_s)[0]
    phases = {k: sum(h.get(k, 0.0) for h in history[1:] or history) / max(1, len(history[1:] or history))
              for k in ("time/rollout_s", "time/generation_s", "time/tools_s", "time/training_s")}
    return {
        "ok": True, "startup_s": startup, "step_s": step_s, "tokens": tokens, "s_per_step": s_per_step,
        "cpu_s": cpu_s, "cpu_s_per_step": cpu_per_step,
        "first_step_s": step_s[0], "tokens_per_s": tps, "gen_tokens_per_episode": sum(tokens) / (n_ep * len(history)),
        "tool_calls_per_episode": sum(h.get("rollout/tool_calls_per_episode", 0.0) for h in history) / len(history),
        "turns_per_episode": sum(h.get("rollout/turns", 0.0) for h in history) / len(history),
        "reward_mean": sum(h.get("reward/mean", 0.0) for h in history) / len(history),
        "phases_s": phases, "phases_per_step": [{k: h.get(k) for k in phases} for h in history],
        "peak_rss_mb": _peak_rss_mb(), "torch_threads": torch.get_num_threads(), "notes": [],
    }


def _make_trl_tool():
    """A ``python(code)`` tool for TRL running code in agentrl's local sandbox, formatted exactly
    like agentrl's PythonTool output. Its schema (from the signature and docstring) equals
    agentrl's ``tool_schema(PythonTool)`` (no return annotation, so no extra ``return`` key)."""
    from agentrl.sandbox import make_sandbox
    from agentrl.tools import PythonTool

    sandbox = make_sandbox("local")

    def python(code: str):
        t = PythonTool(sandbox)
        try:
            return t.call({"code": code})
        finally:
            t.close()

    python.__doc__ = f"{TOOL_DOC}\n\nArgs:\n    code: Python source to run.\n"
    return python, sandbox


def _answer_text(completion) -> str | None:
    if isinstance(completion, list):
        text = "\n".join(m.get("content") or "" for m in completion if m.get("role") == "assistant" and isinstance(m.get("content"), str))
    else:
        text = str(completion)
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def correctness_reward(completions, answer, **kwargs) -> list[float]:
    """TRL reward: 1.0 when the text inside the last <answer>...</answer> equals the gold answer."""
    from agentrl.rewards import math_equal

    return [float(math_equal(_answer_text(c), str(a))) for c, a in zip(completions, answer)]


def worker_trl(spec: dict, workdir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(spec["threads"])
    tool = spec["variant"] == "tool"
    notes: list[str] = []
    P, G = spec["prompts_per_step"], spec["group_size"]
    system = _system_prompt(spec["variant"])
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": t["question"]}],
             "answer": str(t["answer"])} for t in _tasks()]
    dataset = Dataset.from_list(rows)

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tools, sandbox = None, None
    if tool:
        from trl.chat_template_utils import qwen3_template

        # agentrl's tiny tokenizer has its own Qwen2.5-style ChatML template, which TRL's
        # add_response_schema does not recognise: give it TRL's Hermes/Qwen response template.
        tokenizer.response_template = qwen3_template
        notes.append("TRL tool parsing: tokenizer.response_template set to trl.chat_template_utils.qwen3_template "
                     "(agentrl's ChatML template is not in TRL's known-template list)")
        python_tool, sandbox = _make_trl_tool()
        tools = [python_tool]
    max_completion = spec["max_new_tokens"] * (spec["max_turns"] if tool else 1)
    config = dict(
        output_dir=str(Path(workdir) / "trl"), use_cpu=True, report_to="none", bf16=False, fp16=False,
        num_generations=G, per_device_train_batch_size=P * G, gradient_accumulation_steps=1,
        max_completion_length=max_completion, beta=0.0, num_iterations=1, learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        temperature=1.0, top_p=1.0, top_k=0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        scale_rewards="group", mask_truncated_completions=True, logging_steps=1, max_steps=spec["steps"],
        save_strategy="no", seed=spec["seed"], disable_tqdm=True, dataloader_num_workers=0, use_vllm=False,
        gradient_checkpointing=spec.get("gradient_checkpointing", True),
    )
    if tool:
        config["max_tool_calling_iterations"] = spec["max_turns"] - 1
    args = GRPOConfig(**config)

    step_tokens: list[float] = []
    pending = {"tokens": 0.0, "episodes": 0}

    class CountingGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            out = super()._generate(prompts)
            completion_ids, tool_mask = out[1], out[2]
            if tool_mask is not None:
                pending["tokens"] += float(sum(sum(m) for m in tool_mask))
            else:
                pending["tokens"] += float(sum(len(c) for c in completion_ids))
            pending["episodes"] += len(completion_ids)
            return out

    step_s: list[float] = []
    cpu_s: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - self.t)
            cpu_s.append(time.process_time() - self.c)
            step_tokens.append(pending["tokens"])
            pending["tokens"] = 0.0

    trainer = CountingGRPOTrainer(model=model, reward_funcs=correctness_reward, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, tools=tools, callbacks=[StepTimer()])
    startup = time.perf_counter() - t0
    try:
        trainer.train()
    finally:
        if sandbox is not None:
            sandbox.close()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    s_per_step, tps = _steady(step_s, step_tokens)
    n = max(1, len(logs))
    return {
        "ok": True, "startup_s": startup, "step_s": step_s, "tokens": step_tokens, "s_per_step": s_per_step,
        "cpu_s": cpu_s, "cpu_s_per_step": _steady(cpu_s, cpu_s)[0],
        "first_step_s": step_s[0], "tokens_per_s": tps,
        "gen_tokens_per_episode": sum(step_tokens) / max(1, pending["episodes"]),
        "tool_calls_per_episode": sum(h.get("tools/call_frequency", 0.0) for h in logs) / n,
        "reward_mean": sum(h.get("reward", 0.0) for h in logs) / n,
        "peak_rss_mb": _peak_rss_mb(), "torch_threads": torch.get_num_threads(), "notes": notes,
    }


def _hermes_trace(task: dict) -> list[dict]:
    a, b = task.get("a"), task.get("b")
    code = f"print({a} * {b})" if a is not None else "print(" + task["question"].removeprefix("What is ").rstrip("?") + ")"
    return [
        {"role": "system", "content": _system_prompt("tool")},
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
    tools = [_tool_schema()]
    seqs = []
    for task in _tasks(limit=512):
        msgs = _hermes_trace(task)
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


WORKERS = {"agentrl": worker_agentrl, "trl": worker_trl, "warm": worker_warm}


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
        res = WORKERS[a.worker](json.loads(a.spec), a.workdir)
    except Exception as e:
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    Path(a.result).write_text(json.dumps(res, default=str))
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
