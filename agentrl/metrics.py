"""Run metrics: a JSONL file per run (plottable), TensorBoard, Weights & Biases, and a rich progress bar."""
from __future__ import annotations

import json
import math
from pathlib import Path

from agentrl.types import Trajectory


def rollout_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """Per-step rollout statistics, grouped ``reward/...`` and ``rollout/...``."""
    if not trajs:
        return {"reward/mean": float("nan")}
    n = len(trajs)
    out = {"reward/mean": sum(t.reward for t in trajs) / n,
           "reward/std": _std([t.reward for t in trajs])}
    for key in sorted({k for t in trajs for k in t.reward_components}):
        out[f"reward/{key.lstrip('_')}"] = sum(t.reward_components.get(key, 0.0) for t in trajs) / n
    calls = sum(t.n_tool_calls for t in trajs)
    errors = sum(turn.info.get("n_tool_errors", 0) + turn.info.get("n_invalid_calls", 0) for t in trajs for turn in t.turns)
    out.update({
        "rollout/tool_calls_per_episode": calls / n,
        "rollout/tool_error_rate": errors / max(1, calls + errors),
        "rollout/turns": sum(len(t.turns) for t in trajs) / n,
        "rollout/response_tokens": sum(t.n_generated for t in trajs) / n,
        "rollout/total_tokens": sum(len(t.input_ids) for t in trajs) / n,
        "rollout/truncated_frac": sum(t.truncated for t in trajs) / n,
        "rollout/answered_frac": sum(t.stop_reason.value == "answer" for t in trajs) / n,
    })
    return out


def _std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def rollout_sums(trajs: list[Trajectory]) -> dict[str, float]:
    """Additive per-rank totals behind :func:`rollout_metrics`: summed over data-parallel ranks
    (missing keys count as 0), :func:`rollout_metrics_from_sums` gives the global batch's metrics."""
    out = {"n": float(len(trajs)), "reward": sum(t.reward for t in trajs),
           "reward_sq": sum(t.reward ** 2 for t in trajs),
           "tool_calls": float(sum(t.n_tool_calls for t in trajs)),
           "tool_errors": float(sum(turn.info.get("n_tool_errors", 0) + turn.info.get("n_invalid_calls", 0)
                                    for t in trajs for turn in t.turns)),
           "turns": float(sum(len(t.turns) for t in trajs)),
           "response_tokens": float(sum(t.n_generated for t in trajs)),
           "total_tokens": float(sum(len(t.input_ids) for t in trajs)),
           "truncated": float(sum(t.truncated for t in trajs)),
           "answered": float(sum(t.stop_reason.value == "answer" for t in trajs))}
    for key in {k for t in trajs for k in t.reward_components}:
        out[f"component/{key}"] = sum(t.reward_components.get(key, 0.0) for t in trajs)
    return out


def rollout_metrics_from_sums(sums: dict[str, float]) -> dict[str, float]:
    n = sums.get("n", 0.0)
    if not n:
        return {"reward/mean": float("nan")}
    mean = sums["reward"] / n
    out = {"reward/mean": mean, "reward/std": math.sqrt(max(0.0, sums["reward_sq"] / n - mean * mean))}
    for key in sorted(k[len("component/"):] for k in sums if k.startswith("component/")):
        out[f"reward/{key.lstrip('_')}"] = sums[f"component/{key}"] / n
    calls, errors = sums["tool_calls"], sums["tool_errors"]
    out.update({
        "rollout/tool_calls_per_episode": calls / n,
        "rollout/tool_error_rate": errors / max(1, calls + errors),
        "rollout/turns": sums["turns"] / n,
        "rollout/response_tokens": sums["response_tokens"] / n,
        "rollout/total_tokens": sums["total_tokens"] / n,
        "rollout/truncated_frac": sums["truncated"] / n,
        "rollout/answered_frac": sums["answered"] / n,
    })
    return out


def sum_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise sum (missing keys count as 0), keys in first-seen order."""
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


class MetricsWriter:
    """Each step's metrics to the run's backends (``run.report_to``): ``metrics.jsonl`` (every
    value), TensorBoard and W&B (the finite numbers, under the same names). ``enabled=False``
    (data-parallel ranks other than 0) writes nothing and opens no file."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, enabled: bool = True, resume_step: int | None = None,
                 *, report_to: list[str] | None = None, wandb_project: str | None = None, run_name: str | None = None,
                 run_config: dict | None = None, trajectories_every: int = 1):
        """``resume_step``: the step of the checkpoint a resumed run starts from. Rows logged after
        it (by the run that crashed after its last checkpoint) are dropped from the JSONL and
        purged from TensorBoard, since the resumed run logs those steps again; W&B continues the
        same run. ``report_to`` (default: jsonl, plus tensorboard when ``tensorboard``) names the
        backends; ``wandb_project`` / ``run_name`` / ``run_config`` go to ``wandb.init``, and the
        trajectories of every ``trajectories_every``-th step become a W&B table."""
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.report_to = list(report_to) if report_to is not None else ["jsonl"] + (["tensorboard"] if tensorboard else [])
        self.trajectories_every = trajectories_every
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if "jsonl" in self.report_to:
            path = self.out_dir / "metrics.jsonl"
            if resume_step is not None and path.is_file():
                _truncate_after(path, resume_step)
            self._jsonl = open(path, "a", encoding="utf-8")
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)
        if "wandb" in self.report_to:
            self._wandb = WandbRun(self.out_dir, wandb_project, run_name, run_config or {}, resume=resume_step is not None)

    @classmethod
    def for_run(cls, out_dir: Path, run, config: dict, enabled: bool = True, resume_step: int | None = None) -> "MetricsWriter":
        """The writer a run's ``RunConfig`` (``run``) asks for; ``config`` is the whole run config
        as a dict (W&B's run config)."""
        return cls(out_dir, enabled=enabled, resume_step=resume_step, report_to=run.report_to,
                   wandb_project=run.wandb_project, run_name=run.name, run_config=config,
                   trajectories_every=run.log_trajectories_every)

    def write(self, record: dict, step: int) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
            self._jsonl.flush()
        scalars = _scalars(record)
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step)

    def log_trajectories(self, trajs: list[Trajectory], step: int, tokenizer=None) -> None:
        """Sample trajectories of ``step`` as a W&B table (every ``trajectories_every`` steps),
        logged with that step's metrics; ``tokenizer`` decodes the prompts."""
        if self._wandb is not None and trajs and step % self.trajectories_every == 0:
            self._wandb.add_table(TRAJECTORY_COLUMNS, trajectory_rows(trajs, step, tokenizer))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


def _scalars(record: dict) -> dict[str, float]:
    """The values TensorBoard and W&B plot: finite numbers (strings and NaN stay in the JSONL)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}


TRAJECTORY_COLUMNS = ["step", "task_id", "group", "reward", "stop_reason", "turns", "tool_calls", "prompt", "completion"]


def trajectory_rows(trajs: list[Trajectory], step: int, tokenizer=None) -> list[list]:
    """One row per trajectory: the prompt as the model saw it (decoded when a tokenizer is given)
    and every turn's text followed by the observation the environment appended."""
    rows = []
    for t in trajs:
        prompt = tokenizer.decode(t.input_ids[:t.prompt_len]) if tokenizer is not None else ""
        completion = "".join(turn.action + turn.observation for turn in t.turns)
        rows.append([step, t.task_id, t.group_id, t.reward, t.stop_reason.value, len(t.turns), t.n_tool_calls,
                     prompt, completion])
    return rows


class WandbRun:
    """One agentrl run directory's Weights & Biases run.

    The run id is kept in ``out_dir/wandb_run_id``, so ``--resume`` continues the same W&B run.
    ``step`` is the x-axis of every metric (``define_metric``, as transformers' WandbCallback does
    with ``train/global_step``): W&B's own ``_step`` only grows, so a step logged again after a
    resume or a collapse-guard restore would otherwise be dropped, and an offline resumed run
    starts its ``_step`` at 0. Files go to ``$WANDB_DIR`` when set, else to ``out_dir/wandb``.
    """

    ID_FILE = "wandb_run_id"

    def __init__(self, out_dir: Path, project: str | None, name: str | None, config: dict, resume: bool = False):
        import os

        import wandb

        self._wandb = wandb
        id_file = Path(out_dir) / self.ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or "agentrl", name=name, config=config,
                              id=run_id, resume="allow" if run_id else None,
                              # read here, not by wandb: its settings keep the first run's WANDB_DIR
                              dir=os.environ.get("WANDB_DIR") or str(out_dir))
        id_file.write_text(self.run.id + "\n")
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self._tables: dict = {}

    def add_table(self, columns: list[str], rows: list[list], key: str = "trajectories") -> None:
        """Logged with the next :meth:`log`, so the table sits in the same history row as its step."""
        self._tables[key] = self._wandb.Table(columns=columns, data=rows)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log({"step": step, **scalars, **self._tables})
        self._tables = {}

    def close(self) -> None:
        self.run.finish()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (a cut-off last line is dropped too); atomic."""
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(json.dumps(row) + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


class ProgressBar:
    """Step / reward / rate / ETA on the terminal (silent when disabled)."""

    def __init__(self, total: int, enabled: bool = True, start: int = 0, description: str = "train"):
        self.enabled, self.total, self.start, self.description = enabled, total, start, description

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                      TimeRemainingColumn())
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, record: dict, info: str | None = None) -> None:
        if self.enabled:
            info = info if info is not None else (f"reward {record.get('reward/mean', float('nan')):.3f} "
                    f"tools/ep {record.get('rollout/tool_calls_per_episode', 0):.2f} "
                    f"{record.get('time/step_s', 0):.1f}s/step")
            self._progress.update(self._task, completed=step, info=info)

    def __exit__(self, *exc):
        if self.enabled:
            self._progress.stop()
