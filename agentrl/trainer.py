"""GRPO over interleaved thought / call / observation sequences: ``agentrl train CONFIG.yaml``.

One step: collect groups of episodes -> shape rewards (overlong, KL) -> group-relative
advantages -> clipped policy loss over generated tokens only -> optimiser step -> push weights
to the rollout engine -> metrics, checkpoint. Algorithms are chosen by name from registries.

Data parallel (``engine: deepspeed`` under ``torchrun`` / ``deepspeed``; the engine's ``rank`` /
``world_size``; with ``TorchEngine`` these are 0 / 1 and every reduction is the identity):

* Rollouts: every rank draws the same tasks (``data_pos`` stays in step) and keeps whole groups
  ``rank::world_size``, sampling with a rank-offset seed. Dynamic sampling counts informative
  groups over all ranks, so every rank makes the same number of tries.
* Loss: micro-batch weights use the global normaliser (tokens or sequences summed over ranks)
  times ``world_size`` (DeepSpeed averages gradients over ranks), so the update equals the
  single-process update on the whole batch. Every rank runs the same number of micro-batches
  (a short rank pads with a zero-weighted one: ZeRO-2/3 backward passes are collectives), and
  the non-finite-loss and collapse-guard decisions are agreed over ranks.
* Metrics are reduced over ranks; rank 0 alone writes them and shows the progress bar.
* ZeRO-3 with HF rollouts: generating on the partitioned module would gather weights at every
  forward, and ranks generating different lengths would hang. The rollout engine therefore runs
  on a separate full copy of the model, refreshed from ``engine.policy_state_dict()`` (full weights
  on every rank) after each step and restore. ZeRO-1/2 generate on the (replicated) policy module.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from agentrl import advantages as adv_lib
from agentrl.batch import collate
from agentrl.checkpoint import Checkpointer
from agentrl.collector import Collector, CollectorConfig
from agentrl.config import TrainConfig
from agentrl.losses import entropy_from_logits, grpo_loss, kl_penalty, token_logprobs
from agentrl.metrics import (MetricsWriter, ProgressBar, rollout_metrics, rollout_metrics_from_sums, rollout_sums,
                             sum_dicts)
from agentrl.types import Trajectory

log = logging.getLogger("agentrl.trainer")


def load_policy(cfg: TrainConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cfg.model.path)
    if not path.exists() and cfg.model.init_if_missing:
        from agentrl.model import init_tiny_model

        init_tiny_model(path, size=cfg.model.init_if_missing, seed=cfg.run.seed)
    if not path.exists():
        raise FileNotFoundError(f"model.path {path} does not exist (set model.init_if_missing: tiny to build one)")
    dtype = getattr(torch, cfg.model.dtype)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def make_train_engine(cfg: TrainConfig, model):
    if cfg.engine == "deepspeed":
        from agentrl.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg)
    from agentrl.train_engine import TorchEngine

    return TorchEngine(model, cfg.optim, cfg.run.steps, autocast_bf16=cfg.model.dtype == "bfloat16")


def make_rollout_engine(cfg: TrainConfig, model, tokenizer, separate_copy: bool = False):
    if cfg.rollout.engine == "vllm":
        from agentrl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg.model.path, **(cfg.rollout.vllm or {}))
    from agentrl.engines.hf import HFEngine

    if separate_copy:  # ZeRO-3: a full, unpartitioned copy, refreshed by update_weights after each step
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=getattr(torch, cfg.model.dtype)).eval()
        model.requires_grad_(False)
    # Otherwise on CPU the rollout engine shares the policy module: no weight copy, no push.
    return HFEngine(model, tokenizer=tokenizer, num_threads=cfg.rollout.num_threads)


class GRPOTrainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        _seed_everything(cfg.run.seed)
        self.out = Path(cfg.run.output_dir)
        self.model, self.tokenizer = load_policy(cfg)
        self.engine = make_train_engine(cfg, self.model)
        self.rank, self.world_size = self.engine.rank, self.engine.world_size
        self.ref_model = self._reference_model() if cfg.algorithm.kl_coef > 0 else None
        rollout_copy = cfg.rollout.engine == "hf" and getattr(self.engine, "partitioned_weights", False)
        self.rollout = make_rollout_engine(cfg, self.model, self.tokenizer, separate_copy=rollout_copy)
        # the rollout engine holds its own weights: push the policy's after every change
        self._push_weights = cfg.rollout.engine == "vllm" or rollout_copy
        env_kwargs = dict(cfg.env.kwargs)
        if cfg.env.dataset:
            env_kwargs["dataset"] = cfg.env.dataset
        if cfg.env.limit:
            env_kwargs["limit"] = cfg.env.limit
        r = cfg.rollout
        self.collector = Collector(cfg.env.id, self.rollout, CollectorConfig(
            max_new_tokens_per_turn=r.max_new_tokens_per_turn, max_total_tokens=r.max_total_tokens,
            max_observation_tokens=r.max_observation_tokens, tool_workers=r.tool_workers,
            temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, seed=cfg.run.seed), env_kwargs=env_kwargs)
        self.tasks = self._load_tasks(env_kwargs)
        self.order = np.random.default_rng(cfg.run.seed).permutation(len(self.tasks)).tolist()
        self.step, self.data_pos, self.restores = 0, 0, 0
        self._nan_injected = False
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=cfg.run.keep_checkpoints)
        if resume and self.checkpointer.latest() is not None:
            self._restore(self.checkpointer.latest())
        self.metrics = MetricsWriter(self.out, tensorboard=cfg.run.tensorboard, enabled=self.engine.is_main)

    # -- setup ------------------------------------------------------------------------------
    def _load_tasks(self, env_kwargs: dict) -> list[dict]:
        import gymnasium as gym

        probe = gym.make(self.cfg.env.id, **env_kwargs)
        try:
            return list(probe.unwrapped.tasks)
        finally:
            probe.close()

    def _reference_model(self):
        from transformers import AutoModelForCausalLM

        path = self.cfg.model.reference_path or self.cfg.model.path
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.cfg.model.dtype))
        return ref.eval().requires_grad_(False)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        history = []
        with ProgressBar(self.cfg.run.steps, enabled=self.cfg.run.progress and self.engine.is_main, start=self.step) as bar:
            while self.step < self.cfg.run.steps:
                record = self.train_step()
                history.append(record)
                self.metrics.write(record, self.step)
                bar.update(self.step, record)
                if record.get("guard/restored"):
                    continue
                if self.step % self.cfg.run.save_every == 0 or self.step == self.cfg.run.steps:
                    self.save()
        self.metrics.close()
        return history

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        trajs, sampling = self._sample_batch()
        t_rollout = time.perf_counter()
        ref = self._reference_logprobs(trajs)
        t_ref = time.perf_counter()
        rewards = self._shaped_rewards(trajs, ref)
        counts = self._per_rank(len(trajs))  # trajectories held by each rank
        update = self._update(trajs, rewards, ref, counts) if sum(counts) else {"train/skipped": 1.0}
        t_train = time.perf_counter()
        record = {**self._rollout_metrics(trajs), **sampling, **update}
        record.update({"time/rollout_s": t_rollout - t0, "time/generation_s": self.collector.timing.get("generation_s", 0.0),
                       "time/tools_s": self.collector.timing.get("tools_s", 0.0), "time/reference_s": t_ref - t_rollout,
                       "time/training_s": t_train - t_ref, "time/step_s": t_train - t0})
        self.step += 1
        collapsed = self._collapsed(record)
        if self.world_size > 1:  # the metrics are global already; agree anyway (restore is a collective)
            collapsed = self.engine.all_reduce_sum(float(collapsed)) > 0
            if collapsed and not record.get("guard/reasons"):
                record["guard/reasons"] = "collapse detected on another rank"
        if collapsed:
            self._recover(record)
        elif self._push_weights:
            self.rollout.update_weights(self.engine.policy_state_dict())
        return record

    # -- data parallel helpers --------------------------------------------------------------
    def _per_rank(self, value: float) -> list[float]:
        """Every rank's ``value``, in rank order (one all-reduce)."""
        if self.world_size == 1:
            return [value]
        return self.engine.all_reduce_sum([value if r == self.rank else 0.0 for r in range(self.world_size)])

    def _rollout_metrics(self, trajs: list[Trajectory]) -> dict:
        if self.world_size == 1:
            return rollout_metrics(trajs)
        return rollout_metrics_from_sums(sum_dicts(self.engine.all_gather_object(rollout_sums(trajs))))

    def _next_tasks(self, n: int) -> list[dict]:
        picked = []
        for _ in range(n):
            picked.append(self.tasks[self.order[self.data_pos % len(self.order)]])
            self.data_pos += 1
        return picked

    def _sample_batch(self) -> tuple[list[Trajectory], dict]:
        """One batch of groups; with dynamic sampling, uninformative groups are dropped and more
        are sampled (at most ``max_sampling_tries`` rounds) until the batch is full."""
        a, r = self.cfg.algorithm, self.cfg.rollout
        kept: list[Trajectory] = []
        tries = dropped = 0
        kept_groups = 0  # over all ranks
        while tries < (a.max_sampling_tries if a.dynamic_sampling else 1):
            need = r.tasks_per_step - kept_groups
            if need <= 0:
                break
            # every rank draws the same tasks (data_pos stays in step) and keeps whole groups rank::world_size
            tasks = self._next_tasks(need)[self.rank::self.world_size]
            seed = (self.step * 1000 + tries) * self.world_size + self.rank
            batch = self.collector.collect(tasks, r.group_size, seed=seed) if tasks else []
            tries += 1
            offset = len(kept) // r.group_size  # group ids unique across tries
            for t in batch:
                t.group_id += offset
            local_dropped = 0
            if a.dynamic_sampling and batch:
                rewards, groups = _rewards_groups(batch)
                keep = adv_lib.informative_groups(rewards, groups).tolist()
                local_dropped = (len(batch) - sum(keep)) // r.group_size
                batch = [t for t, k in zip(batch, keep) if k]
            kept += batch
            if self.world_size > 1:
                new_groups, new_dropped = self.engine.all_reduce_sum([len(batch) // r.group_size, local_dropped])
                kept_groups += int(round(new_groups))
                dropped += int(round(new_dropped))
            else:
                kept_groups, dropped = len(kept) // r.group_size, dropped + local_dropped
        stats = {"sampling/tries": float(tries), "sampling/dropped_groups": float(dropped),
                 "sampling/groups": float(kept_groups)}
        return kept, stats

    def _shaped_rewards(self, trajs: list[Trajectory], ref) -> torch.Tensor:
        a = self.cfg.algorithm
        rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        if a.overlong == "penalty" and trajs:
            for i, t in enumerate(trajs):
                resp = torch.tensor([len(t.input_ids) - t.prompt_len])
                max_len = self.cfg.rollout.max_total_tokens - t.prompt_len
                rewards[i] += adv_lib.soft_overlong_penalty(resp, max_len, min(a.overlong_cache, max_len), a.overlong_penalty)[0]
        if a.kl_in_reward and ref is not None:
            rewards -= a.kl_coef * ref["seq_kl"]
        return rewards

    def _reference_logprobs(self, trajs: list[Trajectory]):
        if self.ref_model is None or not trajs:
            return None
        batch = collate(trajs, self.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = self.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            ref_lp = token_logprobs(logits, batch["input_ids"], self.cfg.rollout.temperature)
        seq_kl = (kl_penalty(batch["old_logprobs"], ref_lp, "k1") * batch["loss_mask"]).sum(-1)
        return {"logprobs": ref_lp, "seq_kl": seq_kl}

    def _advantages(self, trajs: list[Trajectory], rewards: torch.Tensor, batch: dict) -> torch.Tensor:
        a = self.cfg.algorithm
        groups = torch.tensor([t.group_id for t in trajs])
        if not a.turn_level:
            per_episode = adv_lib.compute_advantages(a.advantage, rewards, groups)
            return per_episode[:, None] * batch["loss_mask"]
        turn_rewards = [[turn.reward for turn in t.turns] for t in trajs]
        outcome = rewards - torch.tensor([sum(tr) for tr in turn_rewards])
        per_turn = adv_lib.turn_level_advantages(turn_rewards, outcome, groups, estimator=a.advantage)
        out = torch.zeros_like(batch["loss_mask"])
        for i, t in enumerate(trajs):
            for (start, end), value in zip(t.turn_spans, per_turn[i]):
                out[i, start:end] = value
        return out * batch["loss_mask"]

    def _update(self, trajs: list[Trajectory], rewards: torch.Tensor, ref, counts: list[float] | None = None) -> dict:
        """Epochs x minibatches of optimiser steps. Data parallel: each rank splits its own
        trajectories into ``minibatches`` parts; minibatch ``m`` is the union of every rank's part
        ``m`` (``counts``: trajectories per rank, from which every rank knows every split)."""
        a, o = self.cfg.algorithm, self.cfg.optim
        counts = [len(trajs)] if counts is None else [int(round(c)) for c in counts]
        batch = None
        if trajs:
            batch = collate(trajs, self.tokenizer.pad_token_id)
            if a.overlong == "mask":
                batch["loss_mask"][torch.tensor([t.truncated for t in trajs])] = 0.0
            batch["advantages"] = self._advantages(trajs, rewards, batch)
            if ref is not None:
                batch["ref_logprobs"] = ref["logprobs"]
        splits = [np.array_split(np.arange(c), a.minibatches) for c in counts]
        local = splits[self.rank]
        # per minibatch, over all ranks: sequences, loss tokens, and the most micro-batches of any rank
        global_len = [sum(len(s[m]) for s in splits) for m in range(a.minibatches)]
        n_micro = [max(math.ceil(len(s[m]) / o.micro_batch_size) for s in splits) for m in range(a.minibatches)]
        tokens = [float(batch["loss_mask"][torch.as_tensor(mb)].sum()) if len(mb) else 0.0 for mb in local]
        if self.world_size > 1:
            tokens = self.engine.all_reduce_sum(tokens)
        self.model.train()
        sums: dict[str, float] = {}
        norms = 0.0
        count = 0
        for _ in range(a.epochs):
            for m, mb in enumerate(local):
                stats, norm = self._minibatch_step(batch, torch.as_tensor(mb), o.micro_batch_size,
                                                   tokens[m], global_len[m], n_micro[m])
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                norms += norm
                count += 1
        self.model.eval()
        if self.world_size > 1:  # each rank's weights sum to world_size x its share
            sums = {k: v / self.world_size for k, v in sum_dicts(self.engine.all_gather_object(sums)).items()}
        sums["grad_norm"] = norms  # the global norm: the same on every rank
        return {f"train/{k}": v / count for k, v in sums.items()}

    def _minibatch_step(self, batch: dict | None, index: torch.Tensor, micro: int, global_tokens: float,
                        global_len: int, n_micro: int) -> tuple[dict, float]:
        """Gradient accumulation where each micro-batch is weighted by its share of the
        minibatch's tokens (token_mean) or sequences, so the sum equals the minibatch loss.

        Data parallel: the shares are of the global minibatch (``global_tokens`` / ``global_len``
        over all ranks), times ``world_size`` since DeepSpeed averages gradients over ranks; every
        rank runs ``n_micro`` micro-batches (padding with zero-weighted ones), and a non-finite
        loss on any rank discards the minibatch on all."""
        a = self.cfg.algorithm
        total_tokens = max(float(global_tokens), 1.0)
        chunks = list(index.split(micro)) if len(index) else []
        device = self.engine.device
        stats: dict[str, float] = {}
        bad = False
        for i in range(n_micro):
            m = None
            if i < len(chunks):
                chunk = chunks[i]
                mb = {k: v[chunk] for k, v in batch.items()}
                width = int(mb["attention_mask"].sum(-1).max())
                mb = {k: v[:, :width].to(device) for k, v in mb.items()}
                logits = self.engine.forward(mb["input_ids"], mb["attention_mask"])
                logprobs = token_logprobs(logits, mb["input_ids"], self.cfg.rollout.temperature)
                # entropy_from_logits[t] belongs to the prediction of token t+1: align it like logprobs
                entropy = torch.nn.functional.pad(entropy_from_logits(logits.detach())[:, :-1], (1, 0))
                loss, m = grpo_loss(
                    logprobs, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], mb.get("ref_logprobs"),
                    clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
                    kl_coef=0.0 if a.kl_in_reward else a.kl_coef, kl_kind=a.kl_kind, aggregation=a.loss_agg,
                    max_len=self.cfg.rollout.max_total_tokens, entropy=entropy, entropy_coef=a.entropy_coef)
                weight = (mb["loss_mask"].sum() / total_tokens) if a.loss_agg == "token_mean" else len(chunk) / global_len
                if self.world_size > 1:
                    weight = weight * self.world_size
                if self.cfg.guard.inject_nan_at_step == self.step and not self._nan_injected:
                    self._nan_injected = True
                    loss = loss * float("nan")
            else:  # this rank has fewer micro-batches: a zero-weighted one keeps the collectives in step
                ids = torch.zeros((1, 2), dtype=torch.long, device=device)
                loss = self.engine.forward(ids, torch.ones_like(ids)).float().mean() * 0.0
                weight = 0.0
            bad = not bool(torch.isfinite(loss))
            if self.world_size > 1:
                bad = self.engine.all_reduce_sum(float(bad)) > 0
            if bad:
                stats["loss"] = float("nan")
                break
            self.engine.backward(loss * weight)
            if m is not None:
                if "loss" not in m:
                    m = {**m, "loss": loss.item()}
                for k, v in m.items():  # (m["loss"] was once added twice: train/loss reported 2x the loss)
                    stats[k] = stats.get(k, 0.0) + float(v) * float(weight)
        if bad:
            self.engine.zero_grad()
            return stats, float("nan")
        return stats, self.engine.step()

    # -- collapse guard ---------------------------------------------------------------------
    def _collapsed(self, record: dict) -> bool:
        g = self.cfg.guard
        if not g.enabled or "train/loss" not in record:
            return False
        reasons = []
        if not math.isfinite(record["train/loss"]):
            reasons.append("non-finite loss")
        norm = record.get("train/grad_norm", 0.0)
        if not math.isfinite(norm) or norm > g.max_grad_norm:
            reasons.append(f"grad norm {norm:.3g}")
        if g.min_entropy is not None and record.get("train/entropy", math.inf) < g.min_entropy:
            reasons.append(f"entropy {record['train/entropy']:.3g} < {g.min_entropy}")
        if g.min_reward is not None and record["reward/mean"] < g.min_reward:
            reasons.append(f"reward {record['reward/mean']:.3g} < {g.min_reward}")
        record["guard/reasons"] = "; ".join(reasons)
        return bool(reasons)

    def _recover(self, record: dict) -> None:
        g = self.cfg.guard
        self.restores += 1
        if self.restores > g.max_restores:
            raise RuntimeError(f"collapse guard: {record['guard/reasons']} at step {self.step}; "
                               f"gave up after {g.max_restores} restores")
        latest = self.checkpointer.latest()
        if latest is not None:
            restores = self.restores
            self._restore(latest)
            self.restores = restores
            where = f"restored {latest.name}"
        else:  # no checkpoint yet: the bad update was not applied (NaN) or is undone by reloading
            self.step -= 1
            where = "no checkpoint yet; step discarded"
            if self._push_weights:  # whatever the policy holds now, the rollout engine must match it
                self.rollout.update_weights(self.engine.policy_state_dict())
        self.engine.scale_lr(g.lr_decay)
        record["guard/restored"] = 1.0
        log.warning("collapse guard at step %d: %s; %s; lr x%.2f", self.step, record["guard/reasons"], where, g.lr_decay)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"step": self.step, "data_pos": self.data_pos, "restores": self.restores}
        return self.checkpointer.save(self.step, self.engine, self.tokenizer, state)

    def _restore(self, directory: Path) -> None:
        state = self.checkpointer.load(directory, self.engine)
        self.step, self.data_pos, self.restores = state["step"], state["data_pos"], state.get("restores", 0)
        if self._push_weights:
            self.rollout.update_weights(self.engine.policy_state_dict())

    def close(self) -> None:
        self.collector.close()


def _rewards_groups(trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([t.reward for t in trajs]), torch.tensor([t.group_id for t in trajs])


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def add_cli_args(parser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/retool_tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5 run.steps=10")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")


def cli_main(args) -> int:
    from agentrl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"agentrl train: {e}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trainer = GRPOTrainer(cfg, resume=args.resume)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    if history and trainer.engine.is_main:
        print(f"done: {len(history)} steps, last reward {history[-1].get('reward/mean', float('nan')):.3f}; "
              f"metrics in {trainer.out / 'metrics.jsonl'}")
    return 0
