"""Trajectories to padded tensors for the trainer, and to / from JSONL for inspection."""
from __future__ import annotations

import json
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


def save_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict()) + "\n")


def load_trajectories(path: str | Path) -> list[Trajectory]:
    with open(path, encoding="utf-8") as f:
        return [Trajectory.from_dict(json.loads(line)) for line in f if line.strip()]
