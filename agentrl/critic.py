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
* **Data parallel** (``engine: deepspeed``): the value model gets its own
  :class:`agentrl.deepspeed_engine.DeepSpeedEngine` (the run's ZeRO stage and offload, the critic's
  optimiser settings) and follows the policy's rules: every rank runs the same number of forwards
  and backwards (a short rank pads with zero-weighted ones), each micro-batch's value loss is
  divided by the minibatch's *global* token count and multiplied by ``world_size`` (DeepSpeed
  averages gradients), the advantages are whitened with global statistics and the metrics are
  reduced over ranks, so the update equals the one-process update on the whole batch. Its
  checkpoint is DeepSpeed's own, under ``critic/deepspeed/``.
"""
from __future__ import annotations

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


class OneProcess:
    """The reductions of a one-process run (what ``TorchEngine`` provides): identities."""

    world_size = 1

    def all_reduce_sum(self, values):
        return [float(v) for v in values]

    def all_gather_object(self, obj):
        return [obj]


class Critic:
    def __init__(self, cfg, device=None, comm=None):
        """``comm``: the policy's train engine, for its rank reductions (default: one process)."""
        self.cfg, c = cfg, cfg.critic
        model = ValueModel(c.model_path or cfg.model.path, seed=cfg.run.seed)
        self.ds = None
        if cfg.engine == "deepspeed":
            from agentrl.deepspeed_engine import DeepSpeedEngine

            self.ds = DeepSpeedEngine(model, _critic_run_config(cfg))
            self.model, self.device = self.ds.engine.module, self.ds.device
        else:
            self.device = torch.device(device or "cpu")
            self.model = model.to(self.device)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=tuple(c.betas),
                                               weight_decay=c.weight_decay)
        self.comm = comm or self.ds or OneProcess()
        self.model.eval()
        self.vocab_size = model.vocab_size
        self.autocast_bf16 = cfg.model.dtype == "bfloat16" and self.ds is None
        self._step_metrics: dict = {}  # from advantages(), reported with the update's

    @classmethod
    def for_run(cls, cfg, engine, tokenizer) -> "Critic":
        """The trainer's critic, on the policy's device, reducing over the policy engine's ranks."""
        if engine.world_size > cfg.rollout.tasks_per_step:
            raise ValueError(f"advantage: gae with {engine.world_size} ranks needs rollout.tasks_per_step >= "
                             f"{engine.world_size} (every rank must hold a group: the critic's passes are collectives)")
        critic = cls(cfg, device=engine.device, comm=engine)
        critic.check_tokenizer(tokenizer)
        return critic

    def check_tokenizer(self, tokenizer) -> None:
        """A critic by path must read the policy's token ids (same tokenizer family)."""
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"critic.model_path {self.cfg.critic.model_path}: vocabulary of {self.vocab_size} "
                             f"tokens, but the policy's tokenizer has {len(tokenizer)}: the critic must share the "
                             "policy's tokenizer")

    # -- phases --------------------------------------------------------------------------------
    def pretraining(self, step: int) -> bool:
        return step < self.cfg.critic.pretrain_steps

    def policy_frozen(self, step: int) -> bool:
        c = self.cfg.critic
        return step < c.pretrain_steps + c.warmup_steps

    # -- forward / backward / step (one process or DeepSpeed) ---------------------------------
    def _forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.ds is not None:  # through the DeepSpeed engine: ZeRO-3 gathers the partitioned weights
            return self.ds.engine(input_ids, attention_mask)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            return self.model(input_ids, attention_mask)

    def _dummy(self) -> Tensor:
        """A zero-weighted forward over every parameter: keeps the ranks' collectives in step."""
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.device)
        return self._forward(ids, torch.ones_like(ids)).sum() * 0.0

    def _backward(self, loss: Tensor) -> None:
        if self.ds is not None:
            self.ds.backward(loss)
        else:
            loss.backward()

    def _step(self) -> float:
        if self.ds is not None:  # DeepSpeed clips, skips a non-finite step and zeroes the gradients
            return self.ds.step()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.critic.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _sum(self, values: list[float]) -> list[float]:
        return self.comm.all_reduce_sum(values) if self.comm.world_size > 1 else [float(v) for v in values]

    def _max(self, value: int) -> int:
        return max(self.comm.all_gather_object(value)) if self.comm.world_size > 1 else value

    # -- values, advantages, targets -----------------------------------------------------------
    def values(self, batch: dict) -> Tensor:
        """``V [B, T]`` (CPU float32, no grad) on ``batch``'s action tokens, 0 elsewhere."""
        o = self.cfg.optim
        out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
        chunks = list(length_order(batch, np.arange(out.shape[0]), o.sort_by_length).split(o.micro_batch_size))
        with torch.no_grad():
            for i in range(self._max(len(chunks))):
                if i >= len(chunks):
                    self._dummy()
                    continue
                mb = micro_batch(batch, chunks[i], self.device)
                v = self._forward(mb["input_ids"], mb["attention_mask"])
                out[chunks[i], :v.shape[1]] = v.float().cpu()
        return out * batch["loss_mask"]

    def advantages(self, trajs, rewards: Tensor, batch: dict, step: int) -> Tensor:
        """The policy's GAE advantages ``[B, T]`` (whitened over the whole batch, all ranks, as verl
        does); puts ``values`` and ``returns`` (the critic's targets) into ``batch``. ``rewards``: the
        shaped episode rewards; each turn's own reward (``TurnRecord.reward``) sits at its last action token."""
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
        v, r, x = values[keep].double(), returns[keep].double(), adv[keep].double()
        n, sv, sr, srr, sd, sdd, sx, sxx, slam, episodes = self._sum([
            v.numel(), v.sum(), r.sum(), (r * r).sum(), (r - v).sum(), ((r - v) ** 2).sum(), x.sum(), (x * x).sum(),
            lam_policy.sum(), lam_policy.numel()])
        var_r, var_d = srr / max(n, 1) - (sr / max(n, 1)) ** 2, sdd / max(n, 1) - (sd / max(n, 1)) ** 2
        self._step_metrics = {
            "critic/values_mean": sv / max(n, 1), "critic/returns_mean": sr / max(n, 1),
            # 1 - Var(R - V) / Var(R): 1 for a perfect critic, 0 for a constant; 0 when the returns are constant
            "critic/explained_var": 1.0 - var_d / var_r if var_r > 1e-12 else 0.0,
            "critic/lambda_policy_mean": slam / max(episodes, 1), "critic/lambda_critic": float(lam_critic),
            "critic/pretraining": float(self.pretraining(step)),
            "critic/policy_frozen": float(self.policy_frozen(step))}
        if self.comm.world_size == 1:
            return gae_lib.masked_whiten(adv, mask)
        mean = sx / max(n, 1)  # the batch's statistics over every rank (masked_whiten's, unbiased variance)
        var = (sxx - n * mean * mean) / max(n - 1, 1)
        return torch.where(keep, (adv - mean) * (var + 1e-8) ** -0.5, 0.0)

    # -- the update ----------------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        """``algorithm.epochs x minibatches`` optimiser steps of the value loss on ``batch`` (this
        rank's share of the step's episodes)."""
        a, c, o = self.cfg.algorithm, self.cfg.critic, self.cfg.optim
        ws = self.comm.world_size
        rows = np.arange(batch["input_ids"].shape[0])
        splits = [length_order(batch, s, o.sort_by_length) for s in np.array_split(rows, a.minibatches)]
        chunks = [list(index.split(o.micro_batch_size)) for index in splits]
        tokens = self._sum([float(batch["loss_mask"][index].sum()) for index in splits])  # per minibatch, all ranks
        n_micro = [self._max(len(ch)) for ch in chunks]
        losses, clip_fracs, vpreds, norms = [], [], [], []
        self.model.train()
        for _ in range(a.epochs):
            for m, minibatch in enumerate(chunks):
                loss_sum = clip_tokens = vpred_tokens = 0.0
                for i in range(n_micro[m]):
                    if i >= len(minibatch):  # a short rank: zero-weighted pass (ZeRO-2/3 backwards are collectives)
                        self._backward(self._dummy())
                        continue
                    mb = micro_batch(batch, minibatch[i], self.device)
                    v = self._forward(mb["input_ids"], mb["attention_mask"]).float()
                    loss, clip_frac = value_loss(v, mb["returns"], mb["values"], mb["loss_mask"], c.cliprange_value,
                                                 normalizer=tokens[m])
                    self._backward(loss * ws)  # DeepSpeed averages gradients over ranks
                    count = float(mb["loss_mask"].sum())
                    loss_sum += float(loss.detach())
                    clip_tokens += clip_frac * count
                    vpred_tokens += float(torch.where(mb["loss_mask"].bool(), v.detach(), 0.0).sum())
                norms.append(self._step())
                loss_sum, clip_tokens, vpred_tokens = self._sum([loss_sum, clip_tokens, vpred_tokens])
                losses.append(loss_sum)
                clip_fracs.append(clip_tokens / max(tokens[m], 1.0))
                vpreds.append(vpred_tokens / max(tokens[m], 1.0))
        self.model.eval()
        return {**self._step_metrics, "critic/vf_loss": _mean(losses), "critic/vf_clipfrac": _mean(clip_fracs),
                "critic/vpred_mean": _mean(vpreds), "critic/grad_norm": _mean(norms), "critic/lr": c.lr}

    # -- state ---------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Every rank calls it (DeepSpeed's save is a collective)."""
        directory = Path(directory)
        if self.ds is not None:
            from agentrl.deepspeed_engine import DS_SUBDIR, DS_TAG

            self.ds.engine.save_checkpoint(str(directory / DS_SUBDIR), tag=DS_TAG, save_latest=False)
            return
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        weights = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, directory / "value_model.safetensors")
        torch.save({"optimizer": self.optimizer.state_dict()}, directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        if self.ds is not None:
            from agentrl.deepspeed_engine import DS_SUBDIR, DS_TAG

            if not (directory / DS_SUBDIR / DS_TAG).is_dir():
                raise FileNotFoundError(f"{directory.parent} holds no DeepSpeed critic ({CRITIC_DIR}/{DS_SUBDIR}/"
                                        f"{DS_TAG}): it was written by a run without advantage: gae or engine: deepspeed")
            self.ds.load(directory)
            return
        weights = directory / "value_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{directory.parent} holds no critic ({CRITIC_DIR}/value_model.safetensors): it was "
                                    "written by a run without advantage: gae (or with engine: deepspeed)")
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(weights, device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=False)["optimizer"])


def _critic_run_config(cfg):
    """The run config with the critic's optimiser settings in ``optim`` (what DeepSpeedEngine reads):
    constant LR, no gradient checkpointing."""
    c = cfg.critic
    optim = cfg.optim.model_copy(update={"lr": c.lr, "betas": c.betas, "weight_decay": c.weight_decay,
                                         "grad_clip": c.grad_clip, "warmup_steps": 0, "schedule": "constant",
                                         "gradient_checkpointing": False})
    return cfg.model_copy(update={"optim": optim})


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


__all__ = ["ValueModel", "value_loss", "Critic", "CRITIC_DIR", "OneProcess"]
