"""Run metrics: a JSONL file per run (plottable), TensorBoard, and a rich progress bar."""
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


class MetricsWriter:
    def __init__(self, out_dir: Path, tensorboard: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def write(self, record: dict, step: int) -> None:
        self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


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

    def update(self, step: int, record: dict) -> None:
        if self.enabled:
            info = (f"reward {record.get('reward/mean', float('nan')):.3f} "
                    f"tools/ep {record.get('rollout/tool_calls_per_episode', 0):.2f} "
                    f"{record.get('time/step_s', 0):.1f}s/step")
            self._progress.update(self._task, completed=step, info=info)

    def __exit__(self, *exc):
        if self.enabled:
            self._progress.stop()
