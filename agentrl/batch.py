"""Trajectories to padded tensors for the trainer, and to / from JSONL for inspection."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import torch

from agentrl.types import Trajectory


def collate(trajectories: list[Trajectory], pad_id: int, advantages: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``[B, T]`` tensors, all aligned token by token.

    ``old_logprobs[b, t]`` is the sampling log-prob of token ``t`` (0 where ``loss_mask`` is 0);
    ``advantages`` is a per-token slot the trainer fills (broadcast from ``advantages`` if given).
    """
    width = max(len(t.input_ids) for t in trajectories)
    batch = {k: torch.zeros(len(trajectories), width, dtype=d) for k, d in
             (("input_ids", torch.long), ("attention_mask", torch.long), ("loss_mask", torch.float32),
              ("old_logprobs", torch.float32), ("advantages", torch.float32))}
    batch["input_ids"].fill_(pad_id)
    for i, t in enumerate(trajectories):
        n = len(t.input_ids)
        batch["input_ids"][i, :n] = torch.tensor(t.input_ids)
        batch["attention_mask"][i, :n] = 1
        batch["loss_mask"][i, :n] = torch.tensor(t.loss_mask, dtype=torch.float32)
        batch["old_logprobs"][i, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
        if advantages is not None:
            batch["advantages"][i, :n] = advantages[i] * batch["loss_mask"][i, :n]
    return batch


def batch_metrics(trajs: list[Trajectory], rewards: torch.Tensor, batch: dict | None, engine) -> dict[str, float]:
    """verl's / TRL's batch statistics of a prepared batch (``advantages`` filled): advantages over
    trained tokens, groups with all-equal rewards (no gradient), response lengths and the share
    cut at the length limit; reduced over ``engine``'s data-parallel ranks."""
    from agentrl.advantages import informative_groups
    from agentrl.metrics import sum_dicts

    sums = {"adv_n": 0.0, "adv_sum": 0.0, "adv_sq": 0.0, "groups": 0.0, "flat_groups": 0.0, "episodes": 0.0,
            "resp_sum": 0.0, "clipped": 0.0}
    extremes = {"adv_max": -math.inf, "adv_min": math.inf, "resp_max": 0.0}
    if trajs:
        keep = batch["loss_mask"].bool()
        adv = batch["advantages"][keep].double()
        groups = torch.tensor([t.group_id for t in trajs])
        informative = informative_groups(rewards, groups)
        lengths = [len(t.input_ids) - t.prompt_len for t in trajs]
        sums.update(adv_n=float(adv.numel()), adv_sum=float(adv.sum()), adv_sq=float((adv ** 2).sum()),
                    groups=float(len(set(groups.tolist()))), episodes=float(len(trajs)), resp_sum=float(sum(lengths)),
                    flat_groups=float(len({g for g, i in zip(groups.tolist(), informative.tolist()) if not i})),
                    clipped=float(sum(t.truncated for t in trajs)))
        if adv.numel():
            extremes.update(adv_max=float(adv.max()), adv_min=float(adv.min()))
        extremes["resp_max"] = float(max(lengths))
    if engine.world_size > 1:
        sums = sum_dicts(engine.all_gather_object(sums))
        gathered = engine.all_gather_object(extremes)
        extremes = {k: (min if k == "adv_min" else max)(g[k] for g in gathered) for k in extremes}
    n, e = max(sums["adv_n"], 1.0), max(sums["episodes"], 1.0)
    mean = sums["adv_sum"] / n
    return {"adv/mean": mean, "adv/std": math.sqrt(max(0.0, sums["adv_sq"] / n - mean * mean)),
            "adv/max": extremes["adv_max"] if sums["adv_n"] else 0.0,
            "adv/min": extremes["adv_min"] if sums["adv_n"] else 0.0,
            "batch/flat_group_frac": sums["flat_groups"] / max(sums["groups"], 1.0),
            "response_length/mean": sums["resp_sum"] / e, "response_length/max": extremes["resp_max"],
            "response_length/clip_frac": sums["clipped"] / e}


def save_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict()) + "\n")


def load_trajectories(path: str | Path) -> list[Trajectory]:
    with open(path, encoding="utf-8") as f:
        return [Trajectory.from_dict(json.loads(line)) for line in f if line.strip()]
