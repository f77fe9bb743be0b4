"""GRPO over interleaved thought / call / observation sequences: ``agentrl train CONFIG.yaml``.

One step: collect groups of episodes -> shape rewards (overlong, KL) -> group-relative
advantages -> clipped policy loss over generated tokens only -> optimiser step -> push weights
to the rollout engine -> metrics, checkpoint. Algorithms are chosen by name from registries.
Right after collection, ``advantage: remax`` adds one greedy rollout per prompt (its reward is the
baseline; never trained on) and ``reward.source: majority_vote`` replaces the env's correctness
reward by agreement with the group's majority answer (``agentrl.pseudo_labels``).
``rollout.mode: async`` (``agentrl.async_rollout``): a worker process samples the next batches
with a copy of the policy at most ``rollout.max_staleness`` versions old while this process
trains; each step takes its batch from it and pushes the new weights back.

Data parallel (``engine: deepspeed`` under ``torchrun`` / ``deepspeed``; the engine's ``rank`` /
``world_size``; with ``TorchEngine`` these are 0 / 1 and every reduction is the identity):

* Rollouts (``agentrl.sampling``): every rank draws the same tasks and keeps whole groups
  ``rank::world_size``, sampling with a rank-offset seed; dynamic sampling agrees over ranks.
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

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import yaml

from agentrl import advantages as adv_lib
from agentrl.batch import batch_metrics, collate
# re-exported: agentrl sft / dpo and tests import them from here
from agentrl.builders import (_seed_everything, load_policy, make_rollout_engine, make_train_engine,  # noqa: F401
                              vllm_engine_kwargs)
from agentrl.checkpoint import Checkpointer
from agentrl.config import TrainConfig
from agentrl.critic import Critic
from agentrl.losses import kl_penalty
from agentrl.metrics import (MetricsWriter, ProgressBar, rollout_metrics, rollout_metrics_from_sums, rollout_sums,
                             sum_dicts)
from agentrl.policy_update import PolicyUpdate
from agentrl.sampling import BatchSampler
from agentrl.types import Trajectory

log = logging.getLogger("agentrl.trainer")


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
        self.sampler = BatchSampler(cfg, self.rollout, self._overlong_penalty, self._reduced, self.rank, self.world_size)
        self.step, self.restores = 0, 0
        self.rollouts = None  # rollout.mode: async: the worker process and the batches in flight
        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=cfg.run.keep_checkpoints)
        resumed = resume and self.checkpointer.latest() is not None
        if resumed:
            self._restore(self.checkpointer.latest())
        self._torch_threads = torch.get_num_threads()
        if cfg.rollout.mode == "async":  # started from the restored weights and data position
            self.rollouts = start_async_rollouts(cfg, self.sampler, self.engine.policy_state_dict(), self.step,
                                                 on_cpu=self.engine.device.type == "cpu")
        self.metrics = MetricsWriter.for_run(self.out, cfg.run, cfg.model_dump(mode="json"), enabled=self.engine.is_main,
                                             resume_step=self.step if resumed else None)
        if self.engine.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    # -- setup ------------------------------------------------------------------------------
    # what the sampler owns, under the names tests and tools use
    collector = property(lambda self: self.sampler.collector)
    greedy_collector = property(lambda self: self.sampler.greedy_collector)
    scorer = property(lambda self: self.sampler.scorer)
    tasks = property(lambda self: self.sampler.tasks)
    order = property(lambda self: self.sampler.order)

    @property
    def data_pos(self) -> int:
        return self.sampler.data_pos

    @data_pos.setter
    def data_pos(self, value: int) -> None:
        self.sampler.data_pos = value

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
        trajs, sampling, timing = self._next_batch()
        t_rollout = time.perf_counter()
        counts = [int(round(c)) for c in self._per_rank(len(trajs))]  # trajectories held by each rank
        batch = collate(trajs, self.tokenizer.pad_token_id) if trajs else None
        ref = self._reference_logprobs(batch, counts)
        t_ref = time.perf_counter()
        rewards = self._shaped_rewards(trajs, ref)
        if batch is not None:
            self._prepare(batch, trajs, rewards, ref)
        batch_stats = batch_metrics(trajs, rewards, batch, self.engine)
        update = self.updater(batch, counts, self.step) if sum(counts) else {"train/skipped": 1.0}
        t_train = time.perf_counter()
        record = {**self._rollout_metrics(trajs), **batch_stats, **sampling, **update, "train/lr": self.engine.lr}
        staleness = [self.step - t.policy_version for t in trajs] or [0]
        record.update({"time/rollout_s": t_rollout - t0, "time/generation_s": timing.get("generation_s", 0.0),
                       "time/tools_s": timing.get("tools_s", 0.0), "time/reference_s": t_ref - t_rollout,
                       "time/training_s": t_train - t_ref, "time/wait_rollout_s": timing.get("wait_s", t_rollout - t0),
                       "async/staleness_mean": sum(staleness) / len(staleness), "async/staleness_max": max(staleness)})
        if "worker_cpu_s" in timing:  # async: the rollout worker's CPU seconds for this batch
            record["time/rollout_worker_cpu_s"] = timing["worker_cpu_s"]
        self.step += 1
        collapsed = self._collapsed(record)
        if self.world_size > 1:  # the metrics are global already; agree anyway (restore is a collective)
            collapsed = self.engine.all_reduce_sum(float(collapsed)) > 0
            if collapsed and not record.get("guard/reasons"):
                record["guard/reasons"] = "collapse detected on another rank"
        if collapsed:
            self._recover(record)
        else:
            record["time/weight_push_s"] = self._push()
            if self.rollouts is not None:  # a push waits for the batch in play when the worker's module is the shared copy
                record["time/wait_rollout_s"] += self.rollouts.last_push_wait_s
        record["time/step_s"] = time.perf_counter() - t0
        self._save_trajectories(trajs)
        return record

    # -- rollouts ---------------------------------------------------------------------------
    def _next_batch(self) -> tuple[list[Trajectory], dict, dict]:
        """This step's trajectories, sampling stats and timing: sampled now with the current
        weights (sync), or the async worker's batch for this step (sampled up to ``max_staleness``
        versions ago; ``wait_s``: how long the trainer waited for it)."""
        if self.rollouts is None:
            trajs, sampling = self._sample_batch()
            return trajs, sampling, self.collector.timing
        got = self.rollouts.take(self.step)
        return got.trajectories, self.sampler.score(got.tasks, got.trajectories, got.seed), {**got.timing, "wait_s": got.wait_s}

    def _push(self) -> float:
        """New weights to every rollout engine that holds its own; returns the seconds it took
        (0 for an engine that shares the policy module). Async: then request the batches the
        staleness bound now allows."""
        start = time.perf_counter()
        if self._push_weights:
            self.rollout.update_weights(self.engine.policy_state_dict())
        if self.rollouts is not None:
            self.rollouts.push(self.engine.policy_state_dict(), self.step)
        seconds = time.perf_counter() - start
        if self.rollouts is not None:
            self.rollouts.fill(self.step)
        return seconds

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

    def _sample_batch(self) -> tuple[list[Trajectory], dict]:
        return self.sampler.sample(self.step)

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
            # whatever the policy holds now, the rollout engines must match it
            self._weights_changed(self.rollouts.consumed_data_pos if self.rollouts is not None else self.data_pos)
        self.engine.scale_lr(g.lr_decay)
        record["guard/restored"] = 1.0
        log.warning("collapse guard at step %d: %s; %s; lr x%.2f", self.step, record["guard/reasons"], where, g.lr_decay)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self) -> Path:
        # async: the position after the batches trained on (those in flight are sampled again on resume)
        data_pos = self.rollouts.consumed_data_pos if self.rollouts is not None else self.data_pos
        state = {"step": self.step, "data_pos": data_pos, "restores": self.restores}
        return self.checkpointer.save(self.step, self.engine, self.tokenizer, state, critic=self.critic)

    def _restore(self, directory: Path) -> None:
        state = self.checkpointer.load(directory, self.engine, critic=self.critic)
        self.step, self.restores = state["step"], state.get("restores", 0)
        self._weights_changed(state["data_pos"])

    def _weights_changed(self, data_pos: int) -> None:
        """After a restore or a discarded step: the rollout engines get the policy's weights and
        sampling continues from ``data_pos`` (async: the batches in flight are discarded)."""
        self.data_pos = data_pos
        if self._push_weights:
            self.rollout.update_weights(self.engine.policy_state_dict())
        if self.rollouts is not None:
            self.rollouts.restart(self.engine.policy_state_dict(), self.step, data_pos)

    def close(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()
            torch.set_num_threads(self._torch_threads)  # as before start_async_rollouts() lowered them
        self.sampler.close()


def start_async_rollouts(cfg: TrainConfig, sampler: BatchSampler, state_dict: dict, version: int, on_cpu: bool):
    from agentrl.async_rollout import AsyncRollouts

    if cfg.algorithm.old_logprobs == "engine":  # set explicitly: the async default is recompute
        log.warning("rollout.mode: async with algorithm.old_logprobs: engine: the PPO ratio is taken against the "
                    "stale behaviour policy (up to rollout.max_staleness=%d versions old), so clipping no longer bounds "
                    "the step from the current weights; the decoupled objective (old_logprobs: recompute, tis: token) "
                    "is the async default", cfg.rollout.max_staleness)
    if on_cpu:
        # the worker generates on rollout.num_threads cores: train on the others, not on all of
        # them (OpenMP threads spinning on a core the worker needs slow both sides down)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = cfg.rollout.train_threads or min(torch.get_num_threads(), max(1, cores - cfg.rollout.num_threads))
        if torch.get_num_threads() != threads:
            log.info("rollout.mode: async on CPU: training on %d torch thread(s), the rollout worker on %d", threads,
                     cfg.rollout.num_threads)
            torch.set_num_threads(threads)
    # On CPU the worker is forked: it shares the trainer's imported modules instead of importing
    # its own (DataLoader workers are forked the same way, torch on one thread). A process that
    # has initialised CUDA cannot fork one that uses it: spawn there.
    return AsyncRollouts(cfg, sampler, state_dict, version, start_method="fork" if on_cpu else "spawn")


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
