"""Preference data from agent rollouts, and the DPO-family losses over it (``agentrl dpo``).

Data. Rollouts are trajectories (``agentrl rollout``'s JSONL, a GRPO run's ``trajectories.jsonl``, or
fresh ones from the collector). Within one group (the same task, sampled together: key ``(step,
group_id, task_id)``) every ordered pair (higher reward, lower reward) whose reward difference is at
least ``margin`` is a preference pair; ties never pair, groups never mix, and at most
``max_pairs_per_group`` pairs per group are kept (a seeded sample). KTO needs no pairs: every
trajectory is desirable (reward >= threshold) or undesirable.

Log-probs. A sequence's log-prob is the sum over its loss-mask-1 tokens, the policy's own sampled
tokens: prompt and tool output never count (:func:`sequence_logps`, on
:func:`agentrl.logprobs.trained_token_stats`, which never even evaluates the head elsewhere).

Losses (a registry chosen by ``algorithm.loss``; each is tested against TRL's at
``tests/reference/trl_preference_losses.py``). With the log-ratios ``c = log pi(y_w) - log
ref(y_w)`` and ``r = log pi(y_l) - log ref(y_l)``:

* ``dpo`` (TRL ``loss_type="sigmoid"``): ``-(1 - eps) log s(beta (c - r)) - eps log s(-beta (c - r))``
  (eps = ``label_smoothing``: conservative DPO; 0 is the DPO paper's loss).
* ``ipo`` (TRL ``"ipo"``): ``(h - 1 / (2 beta))^2`` with ``h`` the same difference of log-ratios of
  per-token *average* log-probs (TRL normalises by each sequence's completion length).
* ``kto`` (TRL's KTOTrainer ``"kto"``): desirable ``w_d (1 - s(beta (c - z0)))``, undesirable
  ``w_u (1 - s(beta (z0 - c)))``; ``z0`` = the batch mean of policy-minus-reference log-ratio on
  mismatched sequences (prompt i with the response of example i-1), detached, clamped at 0.

Each loss also returns TRL's implicit rewards ``beta * log-ratio`` of its chosen and rejected
sequences (logged as ``rewards/chosen`` etc.).
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from agentrl.logprobs import trained_token_stats
from agentrl.types import Trajectory

REQUIRED_FIELDS = ("input_ids", "loss_mask", "reward", "prompt_len")


# ----------------------------------------------------------------------------- rollouts


def load_rollouts(path: str | Path) -> list[Trajectory]:
    """Trajectories of a rollouts JSONL. Rows need ``input_ids``, ``loss_mask``, ``reward`` and
    ``prompt_len``; ``group_id`` / ``task_id`` / ``step`` (a GRPO run's rows) say which group a row
    belongs to (``step`` is kept in ``info["rollout_step"]``). Other Trajectory fields may be absent."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rollouts file not found: {p} (write one with `agentrl rollout --model M "
                                f"--group-size 8 --out {p}`, or use a GRPO run's trajectories.jsonl)")
    trajs = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                trajs.append(_row_to_trajectory(line, f"{p}: line {n}"))
    if not trajs:
        raise ValueError(f"{p} holds no trajectories")
    return trajs


def _row_to_trajectory(line: str, where: str) -> Trajectory:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON: {e}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object (a trajectory)")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"{where}: row has no {', '.join(missing)}: preference training needs each trajectory's "
                         "token ids, loss mask (1 on the policy's sampled tokens) and reward, as `agentrl rollout` "
                         "and a GRPO run's trajectories.jsonl write them")
    if len(row["loss_mask"]) != len(row["input_ids"]):
        raise ValueError(f"{where}: loss_mask has {len(row['loss_mask'])} entries for {len(row['input_ids'])} input_ids")
    step = row.pop("step", None)
    n = len(row["input_ids"])
    row.setdefault("logprobs", [0.0] * n)
    for key, default in (("turns", []), ("reward_components", {}), ("stop_reason", "answer"), ("truncated", False)):
        row.setdefault(key, default)
    try:
        t = Trajectory.from_dict(row)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: not a trajectory: {e}") from None
    if step is not None:
        t.info["rollout_step"] = step
    return t


def group_key(t: Trajectory) -> tuple:
    """Which group a trajectory was sampled in: pairs are only ever built inside one."""
    return (t.info.get("rollout_step"), t.group_id, t.task_id)


def build_pairs(trajs: list[Trajectory], margin: float, max_pairs_per_group: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` index pairs: within each group, every (higher, lower) reward pair
    with ``reward[chosen] - reward[rejected] >= margin`` (``margin > 0``: ties never pair), at most
    ``max_pairs_per_group`` per group (a sample seeded by ``seed``, in a stable order). Trajectories
    without a policy token, and identical sequences, are never paired."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0 (ties carry no preference), got {margin}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(trajs):
        if sum(t.loss_mask):
            groups[group_key(t)].append(i)
    rng = random.Random(seed)
    pairs = []
    for members in groups.values():  # insertion order: the file's / the collector's, so deterministic
        found = [(i, j) for i in members for j in members
                 if trajs[i].reward - trajs[j].reward >= margin and trajs[i].input_ids != trajs[j].input_ids]
        if len(found) > max_pairs_per_group:
            found = sorted(rng.sample(found, max_pairs_per_group))
        pairs += found
    return pairs


def desirable_flags(trajs: list[Trajectory], threshold: float) -> list[bool]:
    """KTO's labels: desirable when the reward reaches ``threshold``."""
    return [t.reward >= threshold for t in trajs]


def mismatched(trajs: list[Trajectory]) -> list[Trajectory]:
    """KTO's KL sequences: example i's prompt followed by example i-1's response (its tokens and
    loss mask after its prompt), as TRL's ``_get_kl_dataset`` shifts completions by one."""
    out = []
    for i, t in enumerate(trajs):
        other = trajs[i - 1]
        ids = t.input_ids[: t.prompt_len] + other.input_ids[other.prompt_len:]
        mask = [0] * t.prompt_len + other.loss_mask[other.prompt_len:]
        out.append(Trajectory(ids, mask, [0.0] * len(ids), t.prompt_len, [], 0.0, {}, other.stop_reason, False))
    return out


# ----------------------------------------------------------------------------- log-probs


def sequence_logps(parts, batch: dict, chunk_tokens: int | None = 1024) -> Tensor:
    """``[B]``: each sequence's summed log-prob over its loss-mask-1 tokens under ``parts`` (a
    :class:`agentrl.logprobs.ModelParts`); grads flow when enabled."""
    logp, _ = trained_token_stats(parts, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                  chunk_tokens=chunk_tokens)
    return logp.sum(-1)


# ----------------------------------------------------------------------------- losses


@dataclass
class PairLogps:
    """Summed log-probs of ``N`` (chosen, rejected) pairs and their policy-token counts."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor


@dataclass
class UnpairedLogps:
    """KTO: summed log-probs of ``N`` examples, their labels and the batch's KL baseline ``z0``."""

    logps: Tensor
    ref_logps: Tensor
    desirable: Tensor  # bool [N]
    kl: Tensor  # scalar, detached, >= 0


@dataclass(frozen=True)
class LossSpec:
    fn: Callable
    paired: bool


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, paired: bool = True):
    def deco(fn):
        LOSSES[name] = LossSpec(fn, paired)
        return fn

    return deco


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; registered: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


@register_loss("dpo")
def dpo_loss(x: PairLogps, beta: float, label_smoothing: float = 0.0, **_) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO loss (label_smoothing > 0: conservative DPO) and the implicit rewards."""
    chosen_ratio, rejected_ratio = x.chosen - x.ref_chosen, x.rejected - x.ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@register_loss("ipo")
def ipo_loss(x: PairLogps, beta: float, **_) -> tuple[Tensor, Tensor, Tensor]:
    """IPO's squared loss on log-ratios of per-token average log-probs (as TRL computes it)."""
    ct, rt = x.chosen_tokens.clamp(min=1), x.rejected_tokens.clamp(min=1)
    chosen_ratio = (x.chosen - x.ref_chosen) / ct
    rejected_ratio = (x.rejected - x.ref_rejected) / rt
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@register_loss("kto", paired=False)
def kto_loss(x: UnpairedLogps, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             **_) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example KTO loss (in the examples' order) and the implicit rewards of the desirable
    (``chosen``) and undesirable (``rejected``) examples."""
    ratio = x.logps - x.ref_logps
    losses = torch.where(x.desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - x.kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (x.kl - ratio))))
    rewards = beta * ratio.detach()
    return losses, rewards[x.desirable], rewards[~x.desirable]


def kto_kl(policy_logps: Tensor, ref_logps: Tensor) -> Tensor:
    """KTO's reference point ``z0``: mean log-ratio on the mismatched sequences, detached, >= 0."""
    return (policy_logps - ref_logps).mean().detach().clamp(min=0)


class PreferenceMetrics:
    """Per-step metrics under TRL's names, accumulated over micro-batches."""

    def __init__(self):
        self.loss, self.n = 0.0, 0
        self.chosen, self.rejected, self.logp_chosen, self.logp_rejected = [], [], [], []

    def add(self, losses, chosen, rejected, logp_chosen, logp_rejected) -> None:
        self.loss += float(losses.detach().sum())
        self.n += len(losses)
        self.chosen.append(chosen.cpu())
        self.rejected.append(rejected.cpu())
        self.logp_chosen.append(logp_chosen.cpu())
        self.logp_rejected.append(logp_rejected.cpu())

    def record(self, paired: bool) -> dict:
        c, r = torch.cat(self.chosen), torch.cat(self.rejected)
        mean = lambda x: float(x.mean()) if x.numel() else float("nan")  # noqa: E731
        out = {"train/loss": self.loss / max(self.n, 1), "rewards/chosen": mean(c), "rewards/rejected": mean(r),
               "logps/chosen": mean(torch.cat(self.logp_chosen)), "logps/rejected": mean(torch.cat(self.logp_rejected))}
        if paired:  # pairwise: fraction of pairs whose chosen implicit reward exceeds the rejected one
            out.update({"rewards/accuracies": float((c > r).float().mean()), "rewards/margins": float((c - r).mean())})
        else:  # KTO (unpaired): desirable rewards > 0, undesirable < 0 count as right; margin of the means
            out.update({"rewards/accuracies": float(torch.cat([c > 0, r < 0]).float().mean()),
                        "rewards/margins": mean(c) - mean(r) if c.numel() and r.numel() else float("nan")})
        return out
