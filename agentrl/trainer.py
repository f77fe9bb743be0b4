"""GRPO over interleaved thought / call / observation sequences: ``agentrl train CONFIG.yaml``.

One step: collect groups of episodes -> shape rewards (overlong, KL) -> group-relative
advantages -> clipped policy loss over generated tokens only -> optimiser step -> push weights
to the rollout engine -> metrics, checkpoint. Algorithms are chosen by name from registries.
Right after collection, ``advantage: remax`` adds one greedy rollout per prompt (its reward is the
baseline; never trained on) and ``reward.source: majority_vote`` replaces the env's correctness
reward by agreement with the group's majority answer (``agentrl.pseudo_labels``).

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

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from agentrl import advantages as adv_lib
from agentrl.batch import collate
from agentrl.checkpoint import Checkpointer
from agentrl.collector import Collector, CollectorConfig
from agentrl.config import TrainConfig
from agentrl.critic import Critic
from agentrl.losses import kl_penalty
from agentrl.metrics import (MetricsWriter, ProgressBar, rollout_metrics, rollout_metrics_from_sums, rollout_sums,
                             sum_dicts)
from agentrl.policy_update import PolicyUpdate
from agentrl.group_scoring import GroupScorer
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
    # engine: torch keeps float32 parameters (master weights) and computes in bf16 under autocast
    dtype = torch.float32 if getattr(cfg, "engine", "torch") == "torch" else getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if cfg.model.lora is not None:  # adapters injected in place: the same module, only they train
        from agentrl.lora import add_adapters

        add_adapters(model, cfg.model.lora)
    return model, AutoTokenizer.from_pretrained(path)


def make_train_engine(cfg: TrainConfig, model):
    if cfg.engine == "deepspeed":
        from agentrl.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg)
    from agentrl.train_engine import TorchEngine, optimizer_steps

    return TorchEngine(model, cfg.optim, optimizer_steps(cfg), autocast_bf16=cfg.model.dtype == "bfloat16")


def vllm_engine_kwargs(cfg: TrainConfig) -> dict:
    """``VLLMEngine`` options: the run's ``rollout.vllm`` over a dtype that follows ``model.dtype``
    (vLLM samples in the training dtype unless ``rollout.vllm.dtype`` says otherwise)."""
    return {"dtype": cfg.model.dtype, **(cfg.rollout.vllm or {})}


def make_rollout_engine(cfg: TrainConfig, model, tokenizer, separate_copy: bool = False):
    if cfg.rollout.engine == "vllm":
        from agentrl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg.model.path, **vllm_engine_kwargs(cfg))
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
        self.ref = self._reference_model() if cfg.algorithm.kl_coef > 0 else None
        self.critic = Critic.for_run(cfg, self.engine, self.tokenizer) if cfg.algorithm.advantage == "gae" else None
        self.updater = PolicyUpdate(self.engine, cfg, self.critic)
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
        # ReMax's baseline episodes: same env, engine and limits, greedy (its own env pool: one env per task)
        self.greedy_collector = Collector(cfg.env.id, self.rollout, dataclasses.replace(
            self.collector.config, temperature=0.0, top_p=1.0, top_k=0), env_kwargs=env_kwargs) \
            if cfg.algorithm.advantage == "remax" else None
        self.scorer = GroupScorer(cfg, self.greedy_collector, self._overlong_penalty, self._reduced, self.world_size)
        self.tasks = self._load_tasks(env_kwargs)
        self.order = np.random.default_rng(cfg.run.seed).permutation(len(self.tasks)).tolist()
        self.step, self.data_pos, self.restores = 0, 0, 0
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=cfg.run.keep_checkpoints)
        resumed = resume and self.checkpointer.latest() is not None
        if resumed:
            self._restore(self.checkpointer.latest())
        self.metrics = MetricsWriter.for_run(self.out, cfg.run, cfg.model_dump(mode="json"), enabled=self.engine.is_main,
                                             resume_step=self.step if resumed else None)
        if self.engine.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # -- setup ------------------------------------------------------------------------------
    def _load_tasks(self, env_kwargs: dict) -> list[dict]:
        import gymnasium as gym

        try:
            probe = gym.make(self.cfg.env.id, **env_kwargs)
        except ValueError as e:  # PythonTool refuses rows without gold unless told they are expected
            if self.cfg.reward.source == "majority_vote" and "lacks field" in str(e):
                raise ValueError(f"{e}; with reward.source: majority_vote rows need no gold: "
                                 "set env.kwargs.require_answer: false") from None
            raise
        try:
            return list(probe.unwrapped.tasks)
        finally:
            probe.close()

    def _reference_model(self):
        """The frozen KL reference, placed by the train engine like the policy (its device and
        compute dtype; partitioned under ZeRO-3); returns its ModelParts. LoRA: the policy itself
        with its adapters off (the base model; no second copy of the weights)."""
        from transformers import AutoModelForCausalLM

        if self.cfg.model.lora is not None and not self.cfg.model.reference_path:
            from agentrl.lora import ReferenceParts

            return ReferenceParts(self.engine, self.model)
        path = self.cfg.model.reference_path or self.cfg.model.path
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return self.engine.frozen_copy(ref)

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> list[dict]:
        history = []
        with ProgressBar(self.cfg.run.steps, enabled=self.cfg.run.progress and self.engine.is_main, start=self.step) as bar:
            while self.step < self.cfg.run.steps:
                record = self.train_step()
                if not record.get("guard/restored"):
                    record.update(self._evaluate())
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
        counts = [int(round(c)) for c in self._per_rank(len(trajs))]  # trajectories held by each rank
        batch = collate(trajs, self.tokenizer.pad_token_id) if trajs else None
        ref = self._reference_logprobs(batch, counts)
        t_ref = time.perf_counter()
        rewards = self._shaped_rewards(trajs, ref)
        if batch is not None:
            self._prepare(batch, trajs, rewards, ref)
        batch_stats = self._batch_metrics(trajs, rewards, batch)
        update = self.updater(batch, counts, self.step) if sum(counts) else {"train/skipped": 1.0}
        t_train = time.perf_counter()
        record = {**self._rollout_metrics(trajs), **batch_stats, **sampling, **update, "train/lr": self.engine.lr}
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
        self._save_trajectories(trajs)
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
        next_group = 0  # group ids are unique within the step: each try's groups get fresh ones
        self.scorer.reset()
        while tries < (a.max_sampling_tries if a.dynamic_sampling else 1):
            need = r.tasks_per_step - kept_groups
            if need <= 0:
                break
            # every rank draws the same tasks (data_pos stays in step) and keeps whole groups rank::world_size
            tasks = self._next_tasks(need)[self.rank::self.world_size]
            seed = (self.step * 1000 + tries) * self.world_size + self.rank
            batch = self.collector.collect(tasks, r.group_size, seed=seed) if tasks else []
            self.scorer.score(tasks, batch, seed)
            tries += 1
            for t in batch:
                t.group_id += next_group
            next_group += len(tasks)
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
        return kept, {**stats, **self.scorer.metrics()}

    def _reduced(self, values: list[float]) -> list[float]:
        return values if self.world_size == 1 else self.engine.all_reduce_sum(values)

    def _overlong_penalty(self, t: Trajectory) -> float:
        """DAPO's soft overlong penalty of one episode (0 unless ``overlong: penalty``)."""
        a = self.cfg.algorithm
        if a.overlong != "penalty":
            return 0.0
        resp = torch.tensor([len(t.input_ids) - t.prompt_len])
        max_len = self.cfg.rollout.max_total_tokens - t.prompt_len
        return float(adv_lib.soft_overlong_penalty(resp, max_len, min(a.overlong_cache, max_len), a.overlong_penalty)[0])

    def _shaped_rewards(self, trajs: list[Trajectory], ref) -> torch.Tensor:
        """Env (or pseudo-label) reward + overlong penalty - KL (``kl_in_reward``). A ReMax baseline
        gets the same overlong penalty but no KL term (it has no reference forward, as in verl)."""
        a = self.cfg.algorithm
        rewards = torch.tensor([t.reward + self._overlong_penalty(t) for t in trajs], dtype=torch.float32)
        if a.kl_in_reward and ref is not None:
            rewards -= a.kl_coef * ref["seq_kl"]
        return rewards

    def _reference_logprobs(self, batch: dict | None, counts: list[int]):
        """Reference log-probs in micro-batches (every rank runs the same number of forwards: a
        collective under ZeRO-3) and each episode's summed KL estimate ``kl_kind`` on its
        sampled tokens (for ``kl_in_reward``)."""
        if self.ref is None:
            return None
        ref_lp = self.updater.logprobs(self.ref, batch, counts)
        if batch is None:
            return None
        kl = kl_penalty(batch["old_logprobs"], ref_lp, self.cfg.algorithm.kl_kind)
        seq_kl = torch.where(batch["loss_mask"].bool(), kl, 0.0).sum(-1)
        return {"logprobs": ref_lp, "seq_kl": seq_kl}

    def _advantages(self, trajs: list[Trajectory], rewards: torch.Tensor, batch: dict) -> torch.Tensor:
        a = self.cfg.algorithm
        if a.advantage == "gae":  # token-level GAE from the learned critic (agentrl.critic, agentrl.gae)
            return self.critic.advantages(trajs, rewards, batch, self.step)
        groups = torch.tensor([t.group_id for t in trajs])
        if not a.turn_level:
            extra = {"baselines": torch.tensor([t.info["remax_baseline"] for t in trajs])} if a.advantage == "remax" else {}
            per_episode = adv_lib.compute_advantages(a.advantage, rewards, groups, token_counts=batch["loss_mask"].sum(-1),
                                                     **extra)
            return per_episode[:, None] * batch["loss_mask"]
        turn_rewards = [[turn.reward for turn in t.turns] for t in trajs]
        outcome = rewards - torch.tensor([sum(tr) for tr in turn_rewards])
        per_turn = adv_lib.turn_level_advantages(turn_rewards, outcome, groups, estimator=a.advantage)
        out = torch.zeros_like(batch["loss_mask"])
        for i, t in enumerate(trajs):
            for (start, end), value in zip(t.turn_spans, per_turn[i]):
                out[i, start:end] = value
        return out * batch["loss_mask"]

    def _prepare(self, batch: dict, trajs: list[Trajectory], rewards: torch.Tensor, ref) -> None:
        """Loss mask (overlong), advantages and reference log-probs into the collated batch."""
        if self.cfg.algorithm.overlong == "mask":
            batch["loss_mask"][torch.tensor([t.truncated for t in trajs])] = 0.0
        batch["advantages"] = self._advantages(trajs, rewards, batch)
        if self.cfg.algorithm.positive_nll_coef:  # VAPO's NLL term: episodes with reward > 0, [B, T] like the mask
            batch["positive"] = torch.tensor([float(t.reward > 0) for t in trajs])[:, None].expand_as(batch["loss_mask"]).clone()
        if ref is not None:
            batch["ref_logprobs"] = ref["logprobs"]

    def _batch_metrics(self, trajs: list[Trajectory], rewards: torch.Tensor, batch: dict | None) -> dict:
        """verl's / TRL's batch statistics: advantages over trained tokens, groups with all-equal
        rewards (no gradient), response lengths and the share cut at the length limit."""
        sums = {"adv_n": 0.0, "adv_sum": 0.0, "adv_sq": 0.0, "groups": 0.0, "flat_groups": 0.0, "episodes": 0.0,
                "resp_sum": 0.0, "clipped": 0.0}
        extremes = {"adv_max": -math.inf, "adv_min": math.inf, "resp_max": 0.0}
        if trajs:
            keep = batch["loss_mask"].bool()
            adv = batch["advantages"][keep].double()
            _, groups = _rewards_groups(trajs)
            informative = adv_lib.informative_groups(rewards, groups)
            lengths = [len(t.input_ids) - t.prompt_len for t in trajs]
            sums.update(adv_n=float(adv.numel()), adv_sum=float(adv.sum()), adv_sq=float((adv ** 2).sum()),
                        groups=float(len(set(groups.tolist()))), episodes=float(len(trajs)), resp_sum=float(sum(lengths)),
                        flat_groups=float(len({g for g, i in zip(groups.tolist(), informative.tolist()) if not i})),
                        clipped=float(sum(t.truncated for t in trajs)))
            if adv.numel():
                extremes.update(adv_max=float(adv.max()), adv_min=float(adv.min()))
            extremes["resp_max"] = float(max(lengths))
        if self.world_size > 1:
            sums = sum_dicts(self.engine.all_gather_object(sums))
            gathered = self.engine.all_gather_object(extremes)
            extremes = {k: (min if k == "adv_min" else max)(g[k] for g in gathered) for k in extremes}
        n, e = max(sums["adv_n"], 1.0), max(sums["episodes"], 1.0)
        mean = sums["adv_sum"] / n
        return {"adv/mean": mean, "adv/std": math.sqrt(max(0.0, sums["adv_sq"] / n - mean * mean)),
                "adv/max": extremes["adv_max"] if sums["adv_n"] else 0.0,
                "adv/min": extremes["adv_min"] if sums["adv_n"] else 0.0,
                "batch/flat_group_frac": sums["flat_groups"] / max(sums["groups"], 1.0),
                "response_length/mean": sums["resp_sum"] / e, "response_length/max": extremes["resp_max"],
                "response_length/clip_frac": sums["clipped"] / e}

    def _evaluate(self) -> dict:
        """The ``eval:`` section's suite every ``eval.every`` steps, on rank 0 with the rollout
        engine (which holds the current weights: shared, or pushed after the step)."""
        e = self.cfg.eval
        if e is None or self.step % e.every or not self.engine.is_main:
            return {}
        from agentrl.eval.run import periodic_eval

        if e.out_dir is None:
            e = e.model_copy(update={"out_dir": str(self.out / "eval")})
        return periodic_eval(e, self.rollout, self.step)

    def _save_trajectories(self, trajs: list[Trajectory]) -> None:
        """A few of the step's trajectories, appended to trajectories.jsonl (for reports)."""
        n = self.cfg.run.save_trajectories
        if not n or not self.engine.is_main or not trajs:
            return
        self.metrics.log_trajectories(trajs[:n], self.step, self.tokenizer)  # a W&B table every N steps
        with open(self.out / "trajectories.jsonl", "a", encoding="utf-8") as f:
            for t in trajs[:n]:
                f.write(json.dumps({"step": self.step, **t.to_dict()}) + "\n")

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
        return self.checkpointer.save(self.step, self.engine, self.tokenizer, state, critic=self.critic)

    def _restore(self, directory: Path) -> None:
        state = self.checkpointer.load(directory, self.engine, critic=self.critic)
        self.step, self.data_pos, self.restores = state["step"], state["data_pos"], state.get("restores", 0)
        if self._push_weights:
            self.rollout.update_weights(self.engine.policy_state_dict())

    def close(self) -> None:
        self.collector.close()
        self.scorer.close()


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
