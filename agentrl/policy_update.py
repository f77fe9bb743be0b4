"""The optimisation half of a training step: a collated batch in, optimiser steps out.

``epochs x minibatches`` optimiser steps; each minibatch is accumulated over micro-batches of
``optim.micro_batch_size`` sequences (sorted by length, so a micro-batch pads to similar lengths).

Normalisation. Every loss aggregation is ``total / count`` (:func:`agentrl.losses.aggregation_count`).
The count is taken over the *whole minibatch* on every rank before its first micro-batch, and each
micro-batch's total is divided by it, so the accumulated gradient is the minibatch loss's gradient
whatever the micro-batch size or the number of ranks. Data parallel: the loss is also multiplied by
``world_size``, since DeepSpeed averages gradients over ranks; every rank runs the same number of
forward/backward passes (a short rank pads with zero-weighted ones: under ZeRO-3 forwards gather
parameters, under ZeRO-2/3 backwards reduce-scatter: both are collectives), and a non-finite loss on
any rank discards the minibatch on all.

Rollout/trainer mismatch (``algorithm.old_logprobs``, ``tis``, ``mismatch_mask``; see the config
docs): with ``recompute`` the trainer's own no-grad forward gives the PPO ratio's old log-probs,
and the engine's log-probs only enter through truncated importance weights and the mismatch mask.
``mismatch/*`` metrics compare the engine's log-probs with the trainer's on the sampled tokens
before any update: from the recompute pass, or in ``engine`` mode from the first minibatch's
forwards (the whole batch when ``minibatches: 1``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from agentrl.logprobs import trained_token_stats
from agentrl.prefix_sharing import PACKABLE_ATTENTION, attention_kind, group_order
from agentrl.losses import aggregation_count, grpo_loss, positive_nll

# How per-micro-batch metrics combine: losses are already divided by the minibatch's count
# (they add up); the extremes take the extreme; every other metric is a token mean (weighted by
# the micro-batch's share of the minibatch's tokens).
ADDITIVE = frozenset({"loss", "pg_loss", "kl", "entropy", "nll_loss"})
EXTREMES = {"ratio_max": max, "ratio_min": min}
LOG_RATIO_CLAMP = 20.0


def length_order(batch: dict, index: np.ndarray, enabled: bool = True, by_prompt: bool = False) -> torch.Tensor:
    """``index`` sorted by sequence length, longest first (micro-batches of similar widths);
    ``by_prompt`` (prefix sharing): the sequences of each prompt kept together, so micro-batches
    hold whole groups to pack."""
    index = torch.as_tensor(index, dtype=torch.long)
    if not enabled or len(index) < 2:
        return index
    if by_prompt:
        order = group_order(batch["input_ids"][index], batch["attention_mask"][index], batch["loss_mask"][index])
        return index[torch.tensor(order, dtype=torch.long)]
    lengths = batch["attention_mask"][index].sum(-1)
    return index[torch.argsort(lengths, descending=True, stable=True)]


def micro_batch(batch: dict, index: torch.Tensor, device) -> dict:
    """Rows ``index`` of every tensor, cut to their longest sequence, on ``device``."""
    mb = {k: v[index] for k, v in batch.items()}
    width = int(mb["attention_mask"].sum(-1).max())
    return {k: v[:, :width].to(device) for k, v in mb.items()}


def _dummy_pass(parts, device) -> torch.Tensor:
    """A forward over every parameter with a zero loss: keeps the ranks' collectives in step."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    return parts.head(parts.hidden(ids, torch.ones_like(ids))).float().mean() * 0.0


def no_grad_logprobs(parts, batch: dict, micro: int, n_chunks: int, temperature: float, device,
                     chunk_tokens: int | None, sort: bool = True, attention: str | None = None) -> torch.Tensor:
    """Log-probs ``[B, T]`` (CPU, float32) of ``batch``'s loss-mask tokens under ``parts`` (the
    policy or the frozen reference), ``micro`` sequences per forward, no grad. ``n_chunks`` is
    the number of forwards every rank makes (the most any rank needs)."""
    out = torch.zeros(batch["input_ids"].shape if batch else (0, 0), dtype=torch.float32)
    chunks = list(length_order(batch, np.arange(out.shape[0]), sort, attention is not None).split(micro)) if batch else []
    with torch.no_grad():
        for i in range(n_chunks):
            if i >= len(chunks):
                _dummy_pass(parts, device)
                continue
            mb = micro_batch(batch, chunks[i], device)
            lp, _ = trained_token_stats(parts, mb["input_ids"], mb["attention_mask"], mb["loss_mask"], temperature,
                                        chunk_tokens=chunk_tokens, attention=attention)
            out[chunks[i], :lp.shape[1]] = lp.float().cpu()
    return out


def mismatch_sums(trainer_lp: torch.Tensor, engine_lp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Additive totals of the engine-vs-trainer gap on the masked tokens (reduced over ranks by
    summing; ``abs_max`` by max)."""
    keep = mask.bool()
    d = (trainer_lp - engine_lp)[keep].double().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if d.numel() == 0:
        return {"n": 0.0, "abs": 0.0, "kl": 0.0, "abs_max": 0.0}
    # KL(pi_engine || pi_trainer) with tokens sampled from the engine, k3 estimator: r - 1 - log r
    # with r = pi_trainer / pi_engine (>= 0, low variance).
    return {"n": float(d.numel()), "abs": float(d.abs().sum()), "kl": float((d.exp() - 1 - d).sum()),
            "abs_max": float(d.abs().max())}


def importance_weights(trainer_lp: torch.Tensor, engine_lp: torch.Tensor, mask: torch.Tensor, level: str,
                       cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights ``min(pi_old / pi_engine, cap)`` per token (``level: token``)
    or per sequence (the product of its tokens' ratios, broadcast), 0 off the mask; and the bool
    ``[B, T]`` of masked tokens whose untruncated weight exceeded ``cap``."""
    log_ratio = _log_ratio(trainer_lp, engine_lp, mask, level)
    weights = torch.exp(log_ratio).clamp(max=cap)
    capped = mask.bool() & (log_ratio > math.log(cap))
    return torch.where(mask.bool(), weights, 0.0), capped


def mismatch_keep(trainer_lp: torch.Tensor, engine_lp: torch.Tensor, mask: torch.Tensor, level: str,
                  threshold: float) -> torch.Tensor:
    """Bool ``[B, T]``: masked tokens whose ratio (token, or its sequence's) lies inside
    ``[1 / threshold, threshold]``; the others are dropped from the loss."""
    log_ratio = _log_ratio(trainer_lp, engine_lp, mask, level)
    return mask.bool() & (log_ratio.abs() <= math.log(threshold))


def _log_ratio(trainer_lp, engine_lp, mask, level: str) -> torch.Tensor:
    d = torch.where(mask.bool(), trainer_lp - engine_lp, 0.0)
    if level == "sequence":
        d = d.sum(-1, keepdim=True).expand_as(d)
    return d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


class PolicyUpdate:
    """Runs the optimiser steps of one training step on ``engine`` (a TrainEngine)."""

    reuse_update_forward = True
    """Whether :meth:`fuses_recompute` may skip the recompute pass (False: always run it)."""

    def __init__(self, engine, cfg, critic=None):
        self.engine, self.cfg = engine, cfg
        self.critic = critic  # advantage: gae: its value model is updated on the same batch (agentrl.critic)
        self._nan_injected = False
        # ZeRO-3: one LM-head call per forward on every rank (see trained_token_stats)
        self.chunk_tokens = None if getattr(engine, "partitioned_weights", False) else cfg.optim.logprob_chunk_tokens
        attention = attention_kind(getattr(engine, "model", None))
        self.attention = attention if cfg.optim.share_prefix and attention in PACKABLE_ATTENTION else None

    # -- helpers shared with the trainer -------------------------------------------------------
    def n_chunks(self, counts: list[int]) -> int:
        """Forwards per rank for a no-grad pass over every rank's trajectories."""
        return max(math.ceil(c / self.cfg.optim.micro_batch_size) for c in counts)

    def logprobs(self, parts, batch: dict | None, counts: list[int]) -> torch.Tensor | None:
        o, r = self.cfg.optim, self.cfg.rollout
        out = no_grad_logprobs(parts, batch or {}, o.micro_batch_size, self.n_chunks(counts), r.temperature,
                               self.engine.device, self.chunk_tokens, o.sort_by_length, self.attention)
        return out if batch else None

    def _reduce(self, sums: dict[str, float], max_keys=(), min_keys=()) -> dict[str, float]:
        """Sum ``sums`` over ranks, except ``max_keys`` / ``min_keys`` (max / min over ranks)."""
        if self.engine.world_size == 1:
            return dict(sums)
        gathered = self.engine.all_gather_object(sums)
        out = {}
        for k in gathered[0]:
            values = [g[k] for g in gathered]
            out[k] = max(values) if k in max_keys else min(values) if k in min_keys else sum(values)
        return out

    # -- the update ----------------------------------------------------------------------------
    def __call__(self, batch: dict | None, counts: list[int], step: int) -> dict:
        """``batch``: this rank's collated trajectories with ``advantages`` (and ``ref_logprobs``)
        or None if it holds none; ``counts``: trajectories per rank."""
        a, o = self.cfg.algorithm, self.cfg.optim
        if self.critic is not None and self.critic.policy_frozen(step):  # value pretraining / critic warm-up
            return {**self.critic.update(batch), "train/policy_frozen": 1.0}
        record: dict[str, float] = {}
        fused = self.fuses_recompute()
        if a.old_logprobs == "recompute" and not fused:
            trainer_lp = self.logprobs(self.engine, batch, counts)
            seen = [(trainer_lp, batch["old_logprobs"], batch["loss_mask"])] if batch is not None else []
            record.update(self._mismatch_record(seen))
            if batch is not None:
                record.update(self._correct_mismatch(batch, trainer_lp))
        splits = [np.array_split(np.arange(c), a.minibatches) for c in counts]
        local = [length_order(batch, mb, o.sort_by_length, self.attention is not None) if batch is not None
                 else torch.zeros(0, dtype=torch.long)
                 for mb in splits[self.engine.rank]]
        n_micro = [max(math.ceil(len(s[m]) / o.micro_batch_size) for s in splits) for m in range(a.minibatches)]
        counts_tokens = [[self._count(batch, mb, a.loss_agg), self._count(batch, mb, "token_mean"),
                          self._positive_count(batch, mb)] for mb in local]
        if self.engine.world_size > 1:
            counts_tokens = [self.engine.all_reduce_sum(ct) for ct in counts_tokens]
        self.engine.model.train()
        steps: list[dict] = []
        norms = []
        capped = {"capped": 0.0, "tokens": 0.0} if fused else None
        for epoch in range(a.epochs):
            for m, index in enumerate(local):
                # engine mode (and a fused recompute): the first minibatch's forwards run before any
                # update, so they measure the engine-vs-trainer gap for free
                seen = [] if (a.old_logprobs == "engine" or fused) and epoch == 0 and m == 0 else None
                stats, norm = self._minibatch(batch, index, n_micro[m], *counts_tokens[m], step, seen, capped)
                if seen is not None:
                    record.update(self._mismatch_record(seen))
                steps.append(stats)
                norms.append(norm)
        if capped is not None and a.tis != "none":
            capped = self._reduce(capped)
            record["mismatch/tis_capped_frac"] = capped["capped"] / max(capped["tokens"], 1.0)
        self.engine.model.eval()
        for k in {k for s in steps for k in s}:
            values = [s[k] for s in steps if k in s]
            record[k] = EXTREMES[k](values) if k in EXTREMES else sum(values) / len(values)
        record["grad_norm"] = sum(norms) / len(norms)  # pre-clip global norm (the same on every rank)
        if self.critic is not None:
            record.update(self.critic.update(batch))
        return {f"train/{k}" if "/" not in k else k: v for k, v in record.items()}

    def fuses_recompute(self) -> bool:
        """``old_logprobs: recompute`` with one optimiser step per batch (``epochs: 1``,
        ``minibatches: 1``): the proximal policy is the weights of the update's own forward, so
        its log-probs are that forward's, detached, and the no-grad recompute pass (one forward
        beside the update's forward and backward) is skipped -- verl's ``on_policy`` case in ``dp_actor.update_policy``
        (``old_log_prob = log_prob.detach()``). The TIS weights come from the same detached
        log-probs, per micro-batch (a micro-batch holds whole sequences). Not with
        ``mismatch_mask``: the mask changes the loss normaliser, which is taken over the whole
        batch before its first micro-batch. With dropout active in training the proximal
        log-probs are then those of the dropped-out forward (the ratio is exactly 1, as in verl)."""
        a = self.cfg.algorithm
        return (self.reuse_update_forward and a.old_logprobs == "recompute" and a.epochs == 1
                and a.minibatches == 1 and a.mismatch_mask == "none")

    def _count(self, batch, index: torch.Tensor, aggregation: str) -> float:
        if batch is None or not len(index):
            return 0.0
        return aggregation_count(aggregation, batch["loss_mask"][index])

    def _positive_count(self, batch, index: torch.Tensor) -> float:
        """Action tokens of positive-reward episodes: the NLL term's denominator (VAPO)."""
        if batch is None or not len(index) or not self.cfg.algorithm.positive_nll_coef:
            return 0.0
        return float((batch["loss_mask"][index] * batch["positive"][index]).sum())

    def _correct_mismatch(self, batch: dict, trainer_lp: torch.Tensor) -> dict[str, float]:
        """Old log-probs := the trainer's; TIS weights and the mismatch mask from the engine's."""
        a = self.cfg.algorithm
        engine_lp, mask = batch["old_logprobs"], batch["loss_mask"]
        out = {}
        if a.mismatch_mask != "none":
            keep = mismatch_keep(trainer_lp, engine_lp, mask, a.mismatch_mask, a.mismatch_threshold)
            out["mismatch/masked_frac"] = float((mask.bool() & ~keep).sum() / mask.sum().clamp(min=1))
            batch["loss_mask"] = mask = mask * keep
        if a.tis != "none":
            batch["is_weights"], capped = importance_weights(trainer_lp, engine_lp, mask, a.tis, a.tis_cap)
            out["mismatch/tis_capped_frac"] = float(capped.sum() / mask.sum().clamp(min=1))
        batch["engine_logprobs"] = engine_lp
        batch["old_logprobs"] = trainer_lp
        return out

    def _mismatch_record(self, seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """``mismatch/*`` metrics over ``(trainer_lp, engine_lp, mask)`` pieces of every rank."""
        total = {"n": 0.0, "abs": 0.0, "kl": 0.0, "abs_max": 0.0}
        for piece in seen:
            for k, v in mismatch_sums(*piece).items():
                total[k] = max(total[k], v) if k == "abs_max" else total[k] + v
        total = self._reduce(total, max_keys=("abs_max",))
        n = max(total["n"], 1.0)
        return {"mismatch/abs_logp_diff_mean": total["abs"] / n, "mismatch/abs_logp_diff_max": total["abs_max"],
                "mismatch/kl": total["kl"] / n}

    def _minibatch(self, batch, index: torch.Tensor, n_micro: int, count: float, tokens: float, positive_tokens: float,
                   step: int, seen: list | None, fused: dict | None = None) -> tuple[dict, float]:
        """One optimiser step over the micro-batches of ``index``; ``seen`` (if a list) collects
        each micro-batch's (trainer log-probs, old log-probs, mask). ``fused`` (see
        :meth:`fuses_recompute`): the old log-probs are the forward's own, detached; it counts
        the tokens whose TIS weight was capped."""
        a, o = self.cfg.algorithm, self.cfg.optim
        chunks = list(index.split(o.micro_batch_size)) if len(index) else []
        device, ws = self.engine.device, self.engine.world_size
        stats: dict[str, float] = {}
        bad = False
        for i in range(n_micro):
            m = None
            if i < len(chunks):
                mb = micro_batch(batch, chunks[i], device)
                logprobs, entropy = trained_token_stats(self.engine, mb["input_ids"], mb["attention_mask"], mb["loss_mask"],
                                                        self.cfg.rollout.temperature, with_entropy=True,
                                                        chunk_tokens=self.chunk_tokens, attention=self.attention)
                if a.entropy_coef == 0.0:
                    entropy = entropy.detach()  # reported only
                engine_lp = mb["old_logprobs"]
                if fused is not None:
                    mb["old_logprobs"] = logprobs.detach()
                    if a.tis != "none":
                        mb["is_weights"], capped = importance_weights(mb["old_logprobs"], engine_lp, mb["loss_mask"],
                                                                      a.tis, a.tis_cap)
                        fused["capped"] += float(capped.sum())
                        fused["tokens"] += float(mb["loss_mask"].sum())
                loss, m = grpo_loss(
                    logprobs, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], mb.get("ref_logprobs"),
                    clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
                    kl_coef=0.0 if a.kl_in_reward else a.kl_coef, kl_kind=a.kl_kind, aggregation=a.loss_agg,
                    max_len=self.cfg.rollout.max_total_tokens, entropy=entropy, entropy_coef=a.entropy_coef,
                    normalizer=count, is_weights=mb.get("is_weights"))
                if a.positive_nll_coef:  # VAPO: NLL of positive episodes' action tokens, over the minibatch's count
                    nll = positive_nll(logprobs, mb["loss_mask"] * mb["positive"], positive_tokens)
                    m["nll_loss"] = float(nll.detach())
                    loss = loss + a.positive_nll_coef * nll
                    m["loss"] = float(loss.detach())
                share = float(mb["loss_mask"].sum()) / max(tokens, 1.0)
                if seen is not None:
                    seen.append((logprobs.detach().cpu(), engine_lp.cpu(), mb["loss_mask"].cpu()))
                if self.cfg.guard.inject_nan_at_step == step and not self._nan_injected:
                    self._nan_injected = True
                    loss = loss * float("nan")
            else:  # this rank has fewer micro-batches: a zero-weighted pass keeps the collectives in step
                loss = _dummy_pass(self.engine, device)
            bad = not bool(torch.isfinite(loss))
            if ws > 1:
                bad = self.engine.all_reduce_sum(float(bad)) > 0
            if bad:
                stats["loss"] = float("nan")
                break
            self.engine.backward(loss * ws)
            for k, v in (m or {}).items():
                if k in EXTREMES:
                    stats[k] = EXTREMES[k](stats.get(k, v), v)
                else:
                    stats[k] = stats.get(k, 0.0) + float(v) * (1.0 if k in ADDITIVE else share)
        stats = self._reduce(stats, max_keys=("ratio_max",), min_keys=("ratio_min",))
        if bad:
            self.engine.zero_grad()
            return stats, float("nan")
        return stats, self.engine.step()
