"""The learned critic of ``algorithm.advantage: gae`` (PPO, VAPO): a value model, its clipped value
loss, its own optimiser, and the step's GAE advantages / critic targets.

* **Value model.** A scalar head ``nn.Linear(hidden, 1)`` on a causal-LM backbone (the LM head is
  dropped): by default a copy of the starting policy (``model.path``, e.g. the SFT model, as verl's
  critic starts from the actor's weights), or another model by ``critic.model_path`` (same tokenizer).
  ``V[b, t]`` is the value of the state before token t: the head at position t - 1 (verl
  verl/workers/critic/dp_critic.py: ``values[:, -response_length - 1 : -1]``).
* **Loss.** verl's ``compute_value_loss`` (verl/trainer/ppo/core_algos.py, after TRL's PPO trainer):
  ``0.5 * token_mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2))`` over action tokens.
* **Phases** (counted in ``run.steps``; the policy does not move in either): the first
  ``critic.pretrain_steps`` steps are VAPO's value pretraining, the critic fitted to Monte-Carlo
  returns (lambda = 1) of the starting policy's rollouts; the next ``critic.warmup_steps`` train
  the critic on its usual ``lambda_critic`` targets before the policy moves.
* **Checkpoints.** :meth:`Critic.save` / :meth:`Critic.load` (weights, optimiser), written into the
  trainer's checkpoint directory under ``critic/`` by :class:`agentrl.checkpoint.Checkpointer`.

One process only (``engine: torch``): the config refuses ``engine: deepspeed`` with a critic.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from agentrl import gae as gae_lib
from agentrl.policy_update import length_order, micro_batch

CRITIC_DIR = "critic"


class ValueModel(nn.Module):
    """A causal-LM body with a scalar value head; ``forward`` gives ``V [B, T]`` aligned with the ids."""

    def __init__(self, path: str, seed: int = 0):
        super().__init__()
        from transformers import AutoModelForCausalLM

        # building a critic leaves the run's RNG alone (a GAE run samples like any other run)
        with torch.random.fork_rng(devices=[]):
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            self.body = getattr(lm, lm.base_model_prefix)
            self.vocab_size = lm.config.vocab_size
            self.head = nn.Linear(lm.config.hidden_size, 1)
        # as a token-classification head is initialised (verl's critic is AutoModelForTokenClassification,
        # num_labels=1: normal(0, initializer_range), bias 0), from the run's seed
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.normal_(0.0, getattr(lm.config, "initializer_range", 0.02), generator=g)
            self.head.bias.zero_()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        v = self.head(h).squeeze(-1).float()
        return nn.functional.pad(v[:, :-1], (1, 0))  # V of the state before token t, from position t - 1


def value_loss(vpreds: Tensor, returns: Tensor, old_values: Tensor, mask: Tensor, cliprange_value: float,
               normalizer: float | None = None) -> tuple[Tensor, float]:
    """``(loss, clip_frac)``: verl's clipped value loss, token-mean over ``mask`` (``normalizer``: the
    minibatch's token count when this is one micro-batch of it). ``clip_frac``: the share of tokens
    where the clipped term is the larger (verl's ``vf_clipfrac``)."""
    keep = mask.bool()
    clipped = torch.clamp(vpreds, old_values - cliprange_value, old_values + cliprange_value)
    l1, l2 = (vpreds - returns) ** 2, (clipped - returns) ** 2
    per_token = torch.where(keep, torch.maximum(l1, l2), 0.0)
    count = float(keep.sum()) if normalizer is None else normalizer
    loss = 0.5 * per_token.sum() / max(count, 1.0)
    clip_frac = float(((l2 > l1) & keep).sum()) / max(float(keep.sum()), 1.0)
    return loss, clip_frac


class Critic:
    def __init__(self, cfg, device=None):
        self.cfg, c = cfg, cfg.critic
        self.device = torch.device(device or "cpu")
        self.model = ValueModel(c.model_path or cfg.model.path, seed=cfg.run.seed).to(self.device).eval()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=tuple(c.betas),
                                           weight_decay=c.weight_decay)
        self.autocast_bf16 = cfg.model.dtype == "bfloat16"
        self._step_metrics: dict = {}  # from advantages(), reported with the update's

    @classmethod
    def for_run(cls, cfg, engine, tokenizer) -> "Critic":
        """The trainer's critic, on the policy's device."""
        critic = cls(cfg, device=engine.device)
        critic.check_tokenizer(tokenizer)
        return critic

    def check_tokenizer(self, tokenizer) -> None:
        """A critic by path must read the policy's token ids (same tokenizer family)."""
        if len(tokenizer) > self.model.vocab_size:
            raise ValueError(f"critic.model_path {self.cfg.critic.model_path}: vocabulary of {self.model.vocab_size} "
                             f"tokens, but the policy's tokenizer has {len(tokenizer)}: the critic must share the "
                             "policy's tokenizer")

    # -- phases --------------------------------------------------------------------------------
    def pretraining(self, step: int) -> bool:
        return step < self.cfg.critic.pretrain_steps

    def policy_frozen(self, step: int) -> bool:
        c = self.cfg.critic
        return step < c.pretrain_steps + c.warmup_steps

    # -- values, advantages, targets -----------------------------------------------------------
    def _autocast(self):
        if not self.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def values(self, batch: dict) -> Tensor:
        """``V [B, T]`` (CPU float32, no grad) on ``batch``'s action tokens, 0 elsewhere."""
        o = self.cfg.optim
        out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        with torch.no_grad(), self._autocast():
            for index in length_order(batch, np.arange(out.shape[0]), o.sort_by_length).split(o.micro_batch_size):
                mb = micro_batch(batch, index, self.device)
                out[index, :mb["input_ids"].shape[1]] = self.model(mb["input_ids"], mb["attention_mask"]).float().cpu()
        return out * batch["loss_mask"]

    def advantages(self, trajs, rewards: Tensor, batch: dict, step: int) -> Tensor:
        """The policy's GAE advantages ``[B, T]`` (whitened over the batch, as verl does); puts
        ``values`` and ``returns`` (the critic's targets) into ``batch``. ``rewards``: the shaped
        episode rewards; each turn's own reward (``TurnRecord.reward``) sits at its last action token."""
        a = self.cfg.algorithm
        mask = batch["loss_mask"]
        values = self.values(batch)
        r_tok = gae_lib.token_rewards(mask, rewards, [t.turn_spans for t in trajs],
                                      [[turn.reward for turn in t.turns] for t in trajs])
        lam_policy = gae_lib.length_adaptive_lambda(mask, a.lambda_alpha) if a.lambda_policy == "length_adaptive" \
            else torch.full((mask.shape[0],), float(a.lambda_policy))
        lam_critic = 1.0 if self.pretraining(step) else a.lambda_critic  # VAPO value pretraining: MC returns
        adv, _ = gae_lib.gae_advantages_returns(r_tok, values, mask, a.gamma, lam_policy)
        _, returns = gae_lib.gae_advantages_returns(r_tok, values, mask, a.gamma, lam_critic)
        batch["values"], batch["returns"] = values, returns
        keep = mask.bool()
        self._step_metrics = {"critic/values_mean": _masked_mean(values, keep), "critic/returns_mean": _masked_mean(returns, keep),
                   "critic/explained_var": _explained_variance(values, returns, keep),
                   "critic/lambda_policy_mean": float(lam_policy.mean()) if lam_policy.numel() else 0.0,
                   "critic/lambda_critic": float(lam_critic),
                   "critic/pretraining": float(self.pretraining(step)), "critic/policy_frozen": float(self.policy_frozen(step))}
        return gae_lib.masked_whiten(adv, mask)

    # -- the update ----------------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        """``algorithm.epochs x minibatches`` optimiser steps of the value loss on ``batch``."""
        a, c, o = self.cfg.algorithm, self.cfg.critic, self.cfg.optim
        splits = np.array_split(np.arange(batch["input_ids"].shape[0]), a.minibatches)
        losses, clip_fracs, vpreds, norms = [], [], [], []
        self.model.train()
        for _ in range(a.epochs):
            for split in splits:
                index = length_order(batch, split, o.sort_by_length)
                tokens = float(batch["loss_mask"][index].sum())
                loss_sum, clip_sum, vpred_sum = 0.0, 0.0, 0.0
                for chunk in index.split(o.micro_batch_size):
                    mb = micro_batch(batch, chunk, self.device)
                    with self._autocast():
                        v = self.model(mb["input_ids"], mb["attention_mask"])
                    loss, clip_frac = value_loss(v, mb["returns"], mb["values"], mb["loss_mask"], c.cliprange_value,
                                                 normalizer=tokens)
                    loss.backward()
                    share = float(mb["loss_mask"].sum()) / max(tokens, 1.0)
                    loss_sum += float(loss.detach())
                    clip_sum += clip_frac * share
                    vpred_sum += _masked_mean(v.detach(), mb["loss_mask"].bool()) * share
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                if torch.isfinite(norm):
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss_sum), clip_fracs.append(clip_sum), vpreds.append(vpred_sum), norms.append(float(norm))
        self.model.eval()
        return {**self._step_metrics, "critic/vf_loss": _mean(losses), "critic/vf_clipfrac": _mean(clip_fracs),
                "critic/vpred_mean": _mean(vpreds), "critic/grad_norm": _mean(norms), "critic/lr": c.lr}

    # -- state ---------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, directory / "value_model.safetensors")
        torch.save({"optimizer": self.optimizer.state_dict()}, directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        weights = directory / "value_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{directory.parent} holds no critic ({CRITIC_DIR}/value_model.safetensors): it was "
                                    "written by a run without advantage: gae")
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(weights, device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False)["optimizer"])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _masked_mean(x: Tensor, keep: Tensor) -> float:
    return float(x[keep].mean()) if keep.any() else 0.0


def _explained_variance(values: Tensor, returns: Tensor, keep: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the action tokens (1: a perfect critic; 0: no better than a constant)."""
    r = returns[keep].double()
    if r.numel() < 2 or float(r.var()) < 1e-12:  # constant returns (e.g. every reward 0): nothing to explain
        return 0.0
    return float(1.0 - (r - values[keep].double()).var() / r.var())


__all__ = ["ValueModel", "value_loss", "Critic", "CRITIC_DIR"]
