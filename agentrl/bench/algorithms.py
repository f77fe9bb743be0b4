"""``agentrl bench algorithms``: every RL method on the CPU multiplication task, one leaderboard.

Each method trains from the same SFT model on agentrl/PythonTool-v0 (``package:mul2_train.jsonl``,
2-digit products with the interpreter) for the same budget of **sampled, trained-on episodes**
(``--episodes N``), over ``--seeds``; then every final checkpoint and the SFT model once are
evaluated on the held-out ``mul2_test`` (``configs/eval/mul2_cpu.yaml``, ``--eval-k`` /
``--eval-limit``). Output: a rich table, ``OUT/leaderboard.json``, ``.md`` and ``.png``
(``agentrl.bench.algorithms_report``).

Budget: a method's steps are N / (tasks_per_step x group_size) of its recipe (8 x 8 = 64 episodes
a step for the group methods, 32 x 1 for ReMax, 64 x 1 for PPO-GAE); a budget that does not divide
is refused with the nearest budgets that do. ``--tasks-per-step T --group-size G`` reshape every
method alike (group methods T x G, group-of-one methods T*G x 1). Work that samples episodes the
policy is not trained on is extra and reported in the cost column, never taken from the budget:
ReMax's greedy baseline rollout per prompt, DAPO's resampled groups (dynamic sampling drops groups
whose rewards are all equal and samples more, up to 3 rounds; a step may also end short), VAPO's
value-pretraining steps (10 % of its policy steps, at least 1, with the policy fixed; they run
before the budget's steps). DPO (``agentrl dpo``, ``configs/dpo_cpu.yaml``) counts the episodes
its iterations collect: iterations = N / (tasks x group) with the GRPO recipe's 8 x 8 per iteration
(the DPO recipe's own 32 x 8 = 256 does not divide the default budgets); it is run only when the
``agentrl dpo`` command and its recipe are installed, otherwise its row says it is not available.
It has no resume: an unfinished DPO run starts again.

Runs: one ``agentrl train`` subprocess per (method, seed) into ``OUT/<method>/seed<S>``, one after
another (never in parallel: 2 shared cores), ``OMP_NUM_THREADS=1``, logs in ``train.log``, each
followed by its held-out eval so an interrupted leaderboard has whole rows. Resumable: a run
whose metrics have every step and whose final checkpoint exists is skipped; one with a checkpoint
continues with ``--resume``; one without is started afresh. An eval whose ``metrics.json`` has the
same k and limit is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EVAL_CONFIG = CONFIGS / "eval" / "mul2_cpu.yaml"
VAPO_PRETRAIN_FRACTION = 0.1  # configs/vapo_cpu.yaml: 5 of 50 steps


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str
    """A config under configs/ (the CPU task's recipe the method starts from)."""
    overrides: tuple[str, ...]
    """``key=value`` settings of the method's paper / verl recipe on top of the recipe."""
    description: str
    value_pretraining: bool = False
    """VAPO: extra critic-only steps before the budget's (see the module docstring)."""
    command: str = "train"
    """``train`` (``agentrl train``, steps) or ``dpo`` (``agentrl dpo``, iterations of collect + DPO)."""


# The clip range, loss aggregation and KL of each method as its paper (or verl's example) sets them;
# everything else (lr 2e-4, temperature 1, token limits, env) is the CPU recipe's.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("grpo", "retool_learn_cpu.yaml",
           ("algorithm.advantage=grpo", "algorithm.clip_high=0.2", "algorithm.loss_agg=seq_mean_token_mean",
            "algorithm.kl_coef=0.04", "algorithm.kl_kind=k3"),
           "GRPO (Shao et al. 2024, arXiv:2402.03300): group-normalised advantages, symmetric clip 0.2, "
           "per-sequence token mean, k3 KL loss 0.04"),
    Method("drgrpo", "retool_learn_cpu.yaml",
           ("algorithm.advantage=drgrpo", "algorithm.clip_high=0.2", "algorithm.loss_agg=seq_mean_token_sum_norm"),
           "Dr. GRPO (Liu et al. 2025, arXiv:2503.20783): no std division, token sum over a constant length "
           "(verl seq-mean-token-sum-norm), no KL"),
    Method("rloo", "retool_learn_cpu.yaml",
           ("algorithm.advantage=rloo", "algorithm.clip_high=0.2", "algorithm.kl_coef=0.001", "algorithm.kl_kind=k1",
            "algorithm.kl_in_reward=true"),
           "RLOO (Ahmadian et al. 2024, arXiv:2402.14740): leave-one-out baseline, KL 0.001 in the reward "
           "(verl's RLOO example)"),
    Method("reinforce_pp", "retool_learn_cpu.yaml",
           ("algorithm.advantage=reinforce_pp", "algorithm.clip_high=0.2", "algorithm.kl_coef=0.001",
            "algorithm.kl_kind=k2", "algorithm.kl_in_reward=true"),
           "REINFORCE++-baseline (Hu 2025, arXiv:2501.03262): group-mean baseline, batch whitening, k2 KL 0.001 "
           "in the reward"),
    Method("dapo", "retool_learn_cpu.yaml",
           ("algorithm.advantage=grpo", "algorithm.clip_low=0.2", "algorithm.clip_high=0.28",
            "algorithm.loss_agg=token_mean", "algorithm.dynamic_sampling=true", "algorithm.max_sampling_tries=3",
            "algorithm.overlong=penalty", "algorithm.overlong_cache=64"),
           "DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher 0.28, dynamic sampling, token-mean loss, "
           "soft overlong penalty, no KL"),
    Method("ppo_gae", "ppo_gae_cpu.yaml", (),
           "PPO with a learned critic, GAE lambda 0.95 (Schulman et al. 2017; verl's gae), 64 prompts x 1"),
    Method("vapo", "vapo_cpu.yaml", (),
           "VAPO (Yue et al. 2025, arXiv:2504.05118): value pretraining, decoupled and length-adaptive GAE, "
           "clip-higher, positive-example NLL 0.1", value_pretraining=True),
    Method("remax", "remax_learn_cpu.yaml", (),
           "ReMax (Li et al. 2023, arXiv:2310.10505): greedy-rollout baseline, 32 prompts x 1"),
    Method("ttrl", "ttrl_learn_cpu.yaml", (),
           "TTRL (Zuo et al. 2025, arXiv:2504.16084): GRPO on majority-vote pseudo-labels, no gold in the reward"),
    Method("dpo", "dpo_cpu.yaml", ("collect.tasks_per_step=8", "collect.group_size=8"),
           "iterative DPO (Rafailov et al. 2023; Pang et al. 2024): each iteration collects 8 x 8 episodes with "
           "the policy, pairs right against wrong answers of a task, one epoch of DPO (beta 0.1) against the SFT model",
           command="dpo"),
)}


def dpo_status() -> str | None:
    """None when ``agentrl dpo`` and its recipe are installed; else why the ``dpo`` row has no numbers."""
    from agentrl.cli import COMMANDS

    if ("dpo",) not in COMMANDS:
        return "not available in this install (no `agentrl dpo` command)"
    if not (CONFIGS / METHODS["dpo"].recipe).is_file():
        return f"not available in this install (no configs/{METHODS['dpo'].recipe})"
    return None


def available_methods() -> list[str]:
    return [m for m in METHODS if m != "dpo" or dpo_status() is None]


# ---------------------------------------------------------------------------------------------- plans
@dataclass
class RunPlan:
    method: str
    command: str
    seed: int
    out: Path
    recipe: Path
    steps: int
    """Policy steps in the budget."""
    pretrain_steps: int
    """Critic-only steps before them (VAPO), extra to the budget."""
    tasks_per_step: int
    group_size: int
    overrides: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        """``agentrl train`` steps (``agentrl dpo``: iterations)."""
        return self.steps + self.pretrain_steps

    @property
    def episodes_per_step(self) -> int:
        return self.tasks_per_step * self.group_size

    def final_checkpoint(self) -> Path | None:
        """The run's last checkpoint once it is complete (``agentrl dpo`` numbers them by optimiser step
        and records the iteration), else None."""
        if self.command == "train":
            path = self.out / "checkpoints" / f"step_{self.total_steps:08d}"
            return path if (path / "trainer_state.json").is_file() else None
        from agentrl.checkpoint import Checkpointer

        latest = Checkpointer(self.out / "checkpoints").latest()
        if latest is not None and json.loads((latest / "trainer_state.json").read_text()).get("iteration") == self.steps:
            return latest
        return None


class BudgetError(ValueError):
    pass


def recipe_shape(method: Method, tasks_per_step: int | None = None, group_size: int | None = None) -> tuple[int, int]:
    """(tasks per step, group size) of the method: its recipe's, or reshaped alike for all (module docstring)."""
    cfg = _load(method.command, CONFIGS / method.recipe, list(method.overrides))
    shape = cfg.rollout if method.command == "train" else cfg.collect
    tps, g = shape.tasks_per_step, shape.group_size
    if tasks_per_step is None and group_size is None:
        return tps, g
    tasks_per_step, group_size = tasks_per_step or tps, group_size or g
    return (tasks_per_step, group_size) if g > 1 else (tasks_per_step * group_size, 1)


def _load(command: str, path: Path, overrides: list[str]):
    from agentrl.config import TrainConfig, load_config

    if command == "dpo":
        from agentrl.dpo import DPOConfig

        return load_config(path, overrides, schema=DPOConfig)
    return load_config(path, overrides, schema=TrainConfig)


def steps_for_budget(episodes: int, tasks_per_step: int, group_size: int, method: str = "") -> int:
    per_step = tasks_per_step * group_size
    if episodes <= 0 or episodes % per_step:
        lower, upper = (episodes // per_step) * per_step, (episodes // per_step + 1) * per_step
        near = " or ".join(str(x) for x in (lower, upper) if x > 0)
        raise BudgetError(f"--episodes {episodes} is not a whole number of {method} steps of {tasks_per_step} x "
                          f"{group_size} = {per_step} episodes: use {near} (every method must get the same budget)")
    return episodes // per_step


def plan_runs(methods: list[str], seeds: list[int], episodes: int, sft_model: Path, out: Path,
              tasks_per_step: int | None = None, group_size: int | None = None, extra: list[str] = ()) -> list[RunPlan]:
    plans = []
    for name in methods:
        m = METHODS[name]
        tps, g = recipe_shape(m, tasks_per_step, group_size)
        steps = steps_for_budget(episodes, tps, g, name)
        pretrain = max(1, round(VAPO_PRETRAIN_FRACTION * steps)) if m.value_pretraining else 0
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            section, length = ("rollout", f"run.steps={steps + pretrain}") if m.command == "train" \
                else ("collect", f"iterations={steps}")
            overrides = [*m.overrides, f"{section}.tasks_per_step={tps}", f"{section}.group_size={g}", length,
                         f"model.path={sft_model}", f"run.output_dir={run_dir}", f"run.seed={seed}",
                         f"run.name={name}_seed{seed}", "run.progress=false", "run.report_to=[jsonl]"]
            if m.value_pretraining:
                overrides.append(f"critic.pretrain_steps={pretrain}")
            plans.append(RunPlan(name, m.command, seed, run_dir, CONFIGS / m.recipe, steps, pretrain, tps, g,
                                 overrides + list(extra)))
    return plans


def validate_plans(plans: list[RunPlan]) -> None:
    """Every run's config parses (a bad --set or a method setting fails here, before hours of runs)."""
    from agentrl.config import ConfigError

    for p in plans:
        try:
            _load(p.command, p.recipe, p.overrides)
        except ConfigError as e:
            raise BudgetError(f"{p.method} seed {p.seed}: {e}") from None


# ---------------------------------------------------------------------------------------------- runs
def _logged_steps(plan: RunPlan) -> set[int]:
    """Steps (``agentrl dpo``: iterations) in the run's metrics."""
    from agentrl.plot import read_metrics

    path = plan.out / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    key = "step" if plan.command == "train" else "iteration"
    return {int(r[key]) for r in rows if key in r}


def run_finished(plan: RunPlan) -> bool:
    return len(_logged_steps(plan)) == plan.total_steps and plan.final_checkpoint() is not None


def _child_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    return env


def _run_logged(cmd: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_child_env(), cwd=REPO).returncode


def _tail(log: Path, n: int = 12) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.is_file() else ""


def train_run(plan: RunPlan) -> tuple[bool, str]:
    """Train one (method, seed) to its final checkpoint; (ok, error tail). Accumulates wall time in bench_run.json."""
    from agentrl.checkpoint import Checkpointer

    resume = plan.command == "train" and Checkpointer(plan.out / "checkpoints").latest() is not None
    if not resume and plan.out.exists():  # nothing to continue from: start clean (metrics.jsonl appends)
        shutil.rmtree(plan.out)
    cmd = [sys.executable, "-m", "agentrl.cli", plan.command, str(plan.recipe), *plan.overrides] + \
        (["--resume"] if resume else [])
    t0 = time.perf_counter()
    rc = _run_logged(cmd, plan.out / "train.log")
    record_path = plan.out / "bench_run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"wall_s": 0.0, "invocations": 0}
    record.update(wall_s=record["wall_s"] + time.perf_counter() - t0, invocations=record["invocations"] + 1)
    record_path.write_text(json.dumps(record))
    ok = rc == 0 and run_finished(plan)
    return ok, "" if ok else f"agentrl {plan.command} exited {rc}; see {plan.out / 'train.log'}:\n{_tail(plan.out / 'train.log')}"


def default_eval_k() -> int:
    import yaml

    return int(yaml.safe_load(EVAL_CONFIG.read_text())["k"])


def eval_done(out: Path, k: int, limit: int | None) -> bool:
    if not (out / "metrics.json").is_file() or not (out / "config.json").is_file():
        return False
    suite = json.loads((out / "config.json").read_text()).get("suite", {})
    return suite.get("k") == k and suite.get("limit") == limit


def evaluate(model: Path, out: Path, k: int, limit: int | None) -> tuple[bool, str]:
    if eval_done(out, k, limit):
        return True, ""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "agentrl.cli", "eval", str(EVAL_CONFIG), f"k={k}", *([f"limit={limit}"] if limit else []),
           "--model", str(model), "--out", str(out), "--no-progress"]
    log = out.parent / f"{out.name}.log"
    rc = _run_logged(cmd, log)
    ok = rc == 0 and (out / "metrics.json").is_file()
    return ok, "" if ok else f"agentrl eval exited {rc}; see {log}:\n{_tail(log)}"


def build_sft_model(out: Path, console) -> Path:
    """The README main job's model init + SFT stage (scripts/cpu_learning_run.sh) into OUT/sft."""
    target = out / "sft" / "sft-model"
    if (target / "config.json").is_file():
        return target
    tiny = out / "sft" / "tiny-model"
    steps = [("agentrl model init (copy drills, ~2 min)",
              ["model", "init", "--out", str(tiny), "--seed", "0", "--pretrain-steps", "600"]),
             ("agentrl sft (warm start on tool-use traces, ~5 min)",
              ["sft", str(CONFIGS / "retool_sft_tiny_cpu.yaml"), f"model.path={tiny}", f"run.output_dir={out / 'sft' / 'run'}",
               "run.seed=0", f"save_to={target}"])]
    for i, (what, args) in enumerate(steps, 1):
        console.print(f"[bold]SFT model {i}/2:[/bold] {what}; log {out / 'sft' / 'build.log'}")
        if _run_logged([sys.executable, "-m", "agentrl.cli", *args], out / "sft" / "build.log"):
            raise SystemExit(f"building the SFT model failed:\n{_tail(out / 'sft' / 'build.log')}")
    return target


# ---------------------------------------------------------------------------------------------- CLI
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=3200,
                        help="sampled, trained-on episodes per run (default 3200 = the CPU recipe's 50 GRPO steps of 8 x 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"of {', '.join(METHODS)}; default: all available ({', '.join(available_methods())})")
    parser.add_argument("--sft-model", default=None,
                        help="the post-SFT model every method starts from; default: build it (model init + SFT, "
                             "the README main job's first stage) into OUT/sft/sft-model")
    parser.add_argument("--out", default="runs/bench_algorithms")
    parser.add_argument("--eval-k", type=int, default=None, help="samples per held-out question (default: the eval config's 4)")
    parser.add_argument("--eval-limit", type=int, default=None, help="held-out questions (default: all 200)")
    parser.add_argument("--tasks-per-step", type=int, default=None, help="reshape every method's batch (see the docstring)")
    parser.add_argument("--group-size", type=int, default=None, help="with --tasks-per-step; group-of-one methods get T*G x 1")
    parser.add_argument("--set", dest="extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="train overrides for every run (e.g. rollout.max_new_tokens_per_turn=16)")


def resolve_methods(requested: list[str] | None) -> list[str]:
    if requested is None:
        return list(METHODS)
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        status = dpo_status()
        raise BudgetError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}"
                          + (f" (dpo: {status})" if status else ""))
    return list(dict.fromkeys(requested))


def cli_main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from agentrl.bench import algorithms_report as report

    console = Console(width=None if sys.stdout.isatty() else 200)
    out = Path(args.out).resolve()
    try:
        methods = resolve_methods(args.methods)
        runnable = [m for m in methods if m in available_methods()]
        sft = Path(args.sft_model).resolve() if args.sft_model else None
        if sft is not None and not (sft / "config.json").is_file():
            raise BudgetError(f"--sft-model {sft}: not a model directory (no config.json)")
        plans = plan_runs(runnable, args.seeds, args.episodes, sft or out / "sft" / "sft-model", out,
                          args.tasks_per_step, args.group_size, args.extra)
        validate_plans(plans)
    except BudgetError as e:
        console.print(f"[red]agentrl bench algorithms:[/red] {e}")
        return 2
    sft = sft or build_sft_model(out, console)
    args.eval_k = args.eval_k or default_eval_k()
    console.print(f"[bold]{len(plans)} runs[/bold] ({', '.join(runnable)} x seeds {args.seeds}), {args.episodes} "
                  f"episodes each, from {sft}; out {out}")
    failures: dict[str, str] = {}
    ok, err = evaluate(sft, out / "sft_eval", args.eval_k, args.eval_limit)
    if not ok:
        failures["sft eval"] = err
    start, spent = time.perf_counter(), []  # spent: seconds of each run trained here (its eval included)
    for i, plan in enumerate(plans, 1):
        label = f"{plan.method} seed {plan.seed}"
        t0 = time.perf_counter()
        if run_finished(plan):
            console.print(f"[dim][{i}/{len(plans)}] {label}: finished earlier, skipped[/dim]")
        else:
            unit = "steps" if plan.command == "train" else "iterations"
            eta = f", ETA {_fmt(sum(spent) / len(spent) * (len(plans) - i + 1))}" if spent else ""
            console.print(f"[{i}/{len(plans)}] {label}: {plan.total_steps} {unit} of {plan.tasks_per_step} x "
                          f"{plan.group_size} episodes (elapsed {_fmt(time.perf_counter() - start)}{eta})")
            ok, err = train_run(plan)
            if not ok:
                failures[label] = err
                console.print(f"[red]{label} failed[/red]: {err}")
                spent.append(time.perf_counter() - t0)
                continue
        ok, err = evaluate(plan.final_checkpoint(), plan.out / "eval", args.eval_k, args.eval_limit)
        if not ok:
            failures[f"{label} eval"] = err
            console.print(f"[red]{label} eval failed[/red]: {err}")
        if time.perf_counter() - t0 > 1.0:
            spent.append(time.perf_counter() - t0)
    unavailable = {m: dpo_status() for m in methods if m not in runnable}
    board = report.build(plans, out, sft, args, unavailable, failures)
    report.write_all(board, out, console)
    return 1 if failures else 0


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"
