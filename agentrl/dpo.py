"""``agentrl dpo CONFIG.yaml``: DPO-family preference training from agent rollouts.

One iteration: rollouts (a saved JSONL, ``rollouts:``; or fresh from the current policy through
the env with the trainer's collector, ``collect:``) -> preference pairs within each group (or KTO's
desirable / undesirable examples, :mod:`agentrl.preference`) -> the frozen reference's sequence
log-probs, once -> ``algorithm.epochs`` passes of the loss named by ``algorithm.loss`` -> a
checkpoint. ``iterations: K`` repeats collect -> pair -> train, the loop of exploration-based
trajectory optimisation (ETO, Song et al. 2024) and iterative DPO.

The reference (``algorithm.reference``): ``start`` (default) keeps the starting model (or
``model.reference_path``) for every iteration, the DPO paper's fixed reference, so every
iteration's update stays anchored at the SFT policy; ``refresh`` makes each iteration's reference
the policy as that iteration starts, as Iterative RPO (Pang et al. 2024) and Self-Rewarding LMs
(Yuan et al. 2024) take the previous iteration's model.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import Field, model_validator

from agentrl.config import EnvConfig, ModelConfig, OptimConfig, RolloutConfig, RunConfig, _Strict

log = logging.getLogger("agentrl.dpo")


class PreferenceAlgorithmConfig(_Strict):
    loss: str = "dpo"
    """A name in ``agentrl.preference.LOSSES``: ``dpo``, ``ipo`` (paired) or ``kto`` (unpaired)."""
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """``dpo`` only: conservative DPO's label noise (TRL's ``label_smoothing``)."""
    margin: float = Field(0.5, gt=0)
    """Paired losses: a pair needs reward(chosen) - reward(rejected) >= margin (ties never pair)."""
    max_pairs_per_group: int = Field(16, ge=1)
    """Paired losses: at most this many pairs per group (a seeded sample when a group has more)."""
    desirable_threshold: float = 0.5
    """``kto``: a trajectory is desirable when its reward >= this."""
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1, description="passes over each iteration's pairs")
    batch_size: int = Field(16, ge=1)
    """Pairs (``kto``: examples) per optimiser step; micro-batched by ``optim.micro_batch_size`` sequences."""
    reference: Literal["start", "refresh"] = "start"
    """``start``: the starting model (or ``model.reference_path``) throughout; ``refresh``: each
    iteration's reference is the policy at that iteration's start (see the module docstring)."""

    @model_validator(mode="after")
    def _options_match_the_loss(self) -> "PreferenceAlgorithmConfig":
        from agentrl.preference import get_loss

        paired = get_loss(self.loss).paired  # unknown name: an error listing the registered ones
        d = PreferenceAlgorithmConfig.model_construct()
        kto_keys = [k for k in ("desirable_threshold", "desirable_weight", "undesirable_weight")
                    if getattr(self, k) != getattr(d, k)]
        pair_keys = [k for k in ("margin", "max_pairs_per_group") if getattr(self, k) != getattr(d, k)]
        if paired and kto_keys:
            raise ValueError(f"algorithm.{', algorithm.'.join(kto_keys)} only apply to loss: kto")
        if not paired and pair_keys:
            raise ValueError(f"algorithm.{', algorithm.'.join(pair_keys)} only apply to paired losses (dpo, ipo): "
                             "kto uses desirable_threshold")
        if self.label_smoothing and self.loss != "dpo":
            raise ValueError("algorithm.label_smoothing only applies to loss: dpo")
        return self


class DPOConfig(_Strict):
    run: RunConfig = Field(default_factory=lambda: RunConfig(name="dpo", output_dir="runs/dpo"))
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollouts: str | None = None
    """A saved rollouts JSONL (``agentrl rollout`` / a GRPO run's ``trajectories.jsonl``)."""
    collect: RolloutConfig | None = None
    """Fresh rollouts each iteration from the current policy: ``tasks_per_step`` tasks of ``env`` x
    ``group_size`` samples, with the trainer's sampling options (HF engine)."""
    iterations: int = Field(1, ge=1)
    algorithm: PreferenceAlgorithmConfig = Field(default_factory=PreferenceAlgorithmConfig)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-5, micro_batch_size=16))

    @model_validator(mode="after")
    def _one_source(self) -> "DPOConfig":
        if (self.rollouts is None) == (self.collect is None):
            raise ValueError("give exactly one source: rollouts: PATH (saved JSONL) or collect: {tasks_per_step, "
                             "group_size, ...} (fresh rollouts from the policy)")
        if self.iterations > 1 and self.collect is None:
            raise ValueError("iterations > 1 collects fresh rollouts from the improved policy: use collect:, "
                             "not rollouts:")
        if self.collect is not None and self.collect.engine != "hf":
            raise ValueError("agentrl dpo collects with the HF engine (collect.engine: hf)")
        default_run = RunConfig()
        for key in ("steps", "save_every"):
            if getattr(self.run, key) != getattr(default_run, key):
                raise ValueError(f"run.{key} does not apply to agentrl dpo: it takes iterations x epochs x "
                                 "batches-of-pairs optimiser steps and checkpoints after every iteration")
        return self


class DPORunner:
    """The loop of the module docstring on one process (``TorchEngine``)."""

    def __init__(self, cfg: DPOConfig):
        from agentrl.train_engine import TorchEngine
        from agentrl.trainer import _seed_everything, load_policy

        self.cfg = cfg
        _seed_everything(cfg.run.seed)
        self.out = Path(cfg.run.output_dir)
        self.saved = None
        if cfg.rollouts is not None:  # read (and checked) before any model loads: bad input fails fast
            from agentrl.preference import load_rollouts

            self.saved = load_rollouts(cfg.rollouts)
        self.model, self.tokenizer = load_policy(cfg)
        self.engine = TorchEngine(self.model, cfg.optim, self._steps_estimate(), autocast_bf16=cfg.model.dtype == "bfloat16")
        self.ref = self._frozen_reference(cfg.model.reference_path or cfg.model.path)
        self.collector = self._collector() if cfg.collect is not None else None
        self.step = 0
        from agentrl.checkpoint import Checkpointer
        from agentrl.metrics import MetricsWriter

        self.checkpointer = Checkpointer(self.out / "checkpoints", keep=cfg.run.keep_checkpoints)
        self.metrics = MetricsWriter.for_run(self.out, cfg.run, cfg.model_dump(mode="json"))
        (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def _steps_estimate(self) -> int:
        """Optimiser steps of the run, the LR schedule's horizon (an upper bound when collecting:
        the number of pairs is only known after each collection)."""
        from agentrl.preference import build_pairs

        c, a = self.cfg.collect, self.cfg.algorithm
        paired = get_loss(a.loss).paired
        if c is not None:
            per_iteration = c.tasks_per_step * (a.max_pairs_per_group if paired else c.group_size)
        else:
            per_iteration = len(build_pairs(self.saved, a.margin, a.max_pairs_per_group)) if paired else len(self.saved)
        return self.cfg.iterations * a.epochs * max(1, math.ceil(per_iteration / a.batch_size))

    def _frozen_reference(self, path: str):
        """The reference's ModelParts (LoRA without reference_path: the policy with its adapters off)."""
        if self.cfg.model.lora is not None and not self.cfg.model.reference_path:
            from agentrl.lora import ReferenceParts

            return ReferenceParts(self.engine, self.model)
        from transformers import AutoModelForCausalLM

        return self.engine.frozen_copy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))

    def _refresh_reference(self) -> None:
        """``reference: refresh``: a frozen copy of the current policy's weights."""
        import copy

        if self.cfg.model.lora is not None:
            raise ValueError("algorithm.reference: refresh is not supported with model.lora")
        ref = copy.deepcopy(self.model)
        self.ref = self.engine.frozen_copy(ref)

    def _collector(self):
        import gymnasium as gym

        from agentrl.collector import Collector, CollectorConfig
        from agentrl.engines.hf import HFEngine

        c, e = self.cfg.collect, self.cfg.env
        env_kwargs = dict(e.kwargs)
        if e.dataset:
            env_kwargs["dataset"] = e.dataset
        if e.limit:
            env_kwargs["limit"] = e.limit
        probe = gym.make(e.id, **env_kwargs)
        try:
            self.tasks = list(probe.unwrapped.tasks)
        finally:
            probe.close()
        self.order = np.random.default_rng(self.cfg.run.seed).permutation(len(self.tasks)).tolist()
        self.data_pos = 0
        # the policy module itself generates (no weight copy, no push): rollouts see every update
        rollout = HFEngine(self.model, tokenizer=self.tokenizer, num_threads=c.num_threads)
        return Collector(e.id, rollout, CollectorConfig(
            max_new_tokens_per_turn=c.max_new_tokens_per_turn, max_total_tokens=c.max_total_tokens,
            max_observation_tokens=c.max_observation_tokens, tool_workers=c.tool_workers, temperature=c.temperature,
            top_p=c.top_p, top_k=c.top_k, seed=self.cfg.run.seed), env_kwargs=env_kwargs)

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> list[dict]:
        history = []
        for iteration in range(1, self.cfg.iterations + 1):
            t0 = time.perf_counter()
            trajs = self._rollouts(iteration)
            if iteration > 1 and self.cfg.algorithm.reference == "refresh":
                self._refresh_reference()
            summary = {"iteration": float(iteration), "time/rollout_s": time.perf_counter() - t0,
                       **_rollout_summary(trajs)}
            records = self._train_iteration(iteration, trajs, summary)
            if not records:  # collect mode, no pair this time: log the rollouts, sample again next iteration
                self.metrics.write(summary, self.step)
                log.warning("iteration %d/%d: rollout reward %.3f, no preference pair (no group with rewards "
                            "differing by >= margin): no update", iteration, self.cfg.iterations, summary["reward/mean"])
                continue
            history += records
            path = self.checkpointer.save(self.step, self.engine, self.tokenizer,
                                          {"step": self.step, "iteration": iteration})
            log.info("iteration %d/%d: rollout reward %.3f, %d steps, loss %.4f, reward accuracy %.3f -> %s",
                     iteration, self.cfg.iterations, summary["reward/mean"], len(records),
                     records[-1]["train/loss"], records[-1]["rewards/accuracies"], path)
        self.metrics.close()
        if not history:
            raise ValueError(_no_pairs_message(trajs, self.cfg.algorithm, None) + f" (in none of {self.cfg.iterations} "
                             "iteration(s))")
        return history

    def _rollouts(self, iteration: int):
        if self.collector is None:
            return self.saved
        c = self.cfg.collect
        tasks = []
        for _ in range(c.tasks_per_step):
            tasks.append(self.tasks[self.order[self.data_pos % len(self.order)]])
            self.data_pos += 1
        self.model.eval()
        with torch.no_grad():
            return self.collector.collect(tasks, c.group_size, seed=iteration)

    def _train_iteration(self, iteration: int, trajs, summary: dict) -> list[dict]:
        from agentrl.metrics import ProgressBar
        from agentrl.preference import build_pairs, desirable_flags, get_loss

        a = self.cfg.algorithm
        spec = get_loss(a.loss)
        if spec.paired:
            units = build_pairs(trajs, a.margin, a.max_pairs_per_group, seed=self.cfg.run.seed * 1000 + iteration)
            if not units and self.collector is None:
                raise ValueError(_no_pairs_message(trajs, a, self.cfg.rollouts))
            if not units:
                return []
            used = sorted({i for pair in units for i in pair})
        else:
            flags = desirable_flags(trajs, a.desirable_threshold)
            units = [i for i, t in enumerate(trajs) if sum(t.loss_mask)]
            if not units:
                raise ValueError("no trajectory has a policy token (loss_mask 1) to train on")
            used = units
        ref = dict(zip(used, self._no_grad_logps(self.ref, [trajs[i] for i in used]).tolist()))
        summary.update({"pairs/count" if spec.paired else "kto/examples": float(len(units))})
        if not spec.paired:
            summary["kto/desirable_frac"] = sum(flags[i] for i in units) / len(units)
        rng = np.random.default_rng(self.cfg.run.seed * 1000 + iteration)
        n_batches = math.ceil(len(units) / a.batch_size)
        records = []
        with ProgressBar(a.epochs * n_batches, enabled=self.cfg.run.progress,
                         description=f"dpo iteration {iteration}/{self.cfg.iterations}") as bar:
            for epoch in range(a.epochs):
                order = rng.permutation(len(units))
                for b in range(n_batches):
                    t0 = time.perf_counter()
                    batch = [units[k] for k in order[b * a.batch_size:(b + 1) * a.batch_size]]
                    if spec.paired:
                        stats = self._pair_step(spec, trajs, batch, ref)
                    else:
                        stats = self._kto_step(spec, trajs, batch, ref, flags)
                    stats.update({"train/grad_norm": self.engine.step(), "train/lr": self.engine.lr, "epoch": float(epoch),
                                  "time/step_s": time.perf_counter() - t0})
                    self.step += 1
                    if not records:
                        stats.update(summary)  # the iteration's rollout statistics on its first step
                    self.metrics.write(stats, self.step)
                    records.append(stats)
                    bar.update(len(records), stats, info=f"loss {stats['train/loss']:.4f} acc "
                               f"{stats['rewards/accuracies']:.2f} margin {stats['rewards/margins']:.3f} "
                               f"{stats['time/step_s']:.1f}s/step")
        return records

    def _no_grad_logps(self, parts, trajs) -> torch.Tensor:
        from agentrl.batch import collate
        from agentrl.policy_update import no_grad_logprobs

        o = self.cfg.optim
        batch = collate(trajs, self.tokenizer.pad_token_id)
        lp = no_grad_logprobs(parts, batch, o.micro_batch_size, math.ceil(len(trajs) / o.micro_batch_size), 1.0,
                              self.engine.device, o.logprob_chunk_tokens, o.sort_by_length)
        return lp.sum(-1)

    def _micro_logps(self, trajs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed policy log-probs (with grad) and policy-token counts of ``trajs``."""
        from agentrl.batch import collate
        from agentrl.preference import sequence_logps

        batch = {k: v.to(self.engine.device) for k, v in collate(trajs, self.tokenizer.pad_token_id).items()}
        return sequence_logps(self.engine, batch, self.cfg.optim.logprob_chunk_tokens), batch["loss_mask"].sum(-1)

    def _pair_step(self, spec, trajs, pairs: list[tuple[int, int]], ref: dict) -> dict:
        """One optimiser step's gradients over ``pairs``: the mean per-pair loss, micro-batched
        (``micro_batch_size`` sequences = half as many pairs per forward)."""
        from agentrl.preference import PairLogps, PreferenceMetrics

        a = self.cfg.algorithm
        micro = max(1, self.cfg.optim.micro_batch_size // 2)
        sums = PreferenceMetrics()
        self.model.train()
        for s in range(0, len(pairs), micro):
            chunk = pairs[s:s + micro]
            logps, tokens = self._micro_logps([trajs[i] for i, _ in chunk] + [trajs[j] for _, j in chunk])
            n = len(chunk)
            x = PairLogps(logps[:n], logps[n:], _ref(ref, [i for i, _ in chunk]), _ref(ref, [j for _, j in chunk]),
                          tokens[:n], tokens[n:])
            losses, chosen, rejected = spec.fn(x, **a.model_dump())
            self.engine.backward(losses.sum() / len(pairs))
            sums.add(losses, chosen, rejected, x.chosen.detach(), x.rejected.detach())
        self.model.eval()
        return sums.record(paired=True)

    def _kto_step(self, spec, trajs, examples: list[int], ref: dict, flags: list[bool]) -> dict:
        """KTO: the batch's KL baseline first (mismatched sequences, no grad), then the mean
        per-example loss, micro-batched."""
        from agentrl.preference import PreferenceMetrics, UnpairedLogps, kto_kl, mismatched

        a = self.cfg.algorithm
        shifted = mismatched([trajs[i] for i in examples])
        kl = kto_kl(self._no_grad_logps(self.engine, shifted), self._no_grad_logps(self.ref, shifted))
        micro = self.cfg.optim.micro_batch_size
        sums = PreferenceMetrics()
        self.model.train()
        for s in range(0, len(examples), micro):
            chunk = examples[s:s + micro]
            logps, _ = self._micro_logps([trajs[i] for i in chunk])
            desirable = torch.tensor([flags[i] for i in chunk], device=logps.device)
            x = UnpairedLogps(logps, _ref(ref, chunk), desirable, kl.to(logps.device))
            losses, chosen, rejected = spec.fn(x, **a.model_dump())
            self.engine.backward(losses.sum() / len(examples))
            sums.add(losses, chosen, rejected, logps.detach()[desirable], logps.detach()[~desirable])
        self.model.eval()
        return {**sums.record(paired=False), "kl": float(kl)}

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()


def get_loss(name: str):
    from agentrl.preference import get_loss as _get

    return _get(name)


def _ref(ref: dict, index: list[int]) -> torch.Tensor:
    return torch.tensor([ref[i] for i in index], dtype=torch.float32)


def _rollout_summary(trajs) -> dict:
    from agentrl.metrics import rollout_metrics

    return rollout_metrics(trajs)


def _no_pairs_message(trajs, a: PreferenceAlgorithmConfig, source: str | None) -> str:
    from agentrl.preference import group_key

    groups = {group_key(t) for t in trajs}
    rewards = sorted({round(t.reward, 4) for t in trajs})
    where = source or "the collected rollouts"
    return (f"no preference pairs in {where}: {len(trajs)} trajectories in {len(groups)} groups, rewards {rewards[:8]}; "
            f"a pair needs two trajectories of one group (same step, group_id, task_id) whose rewards differ by >= "
            f"algorithm.margin ({a.margin}). Sample several per task (group_size >= 2), lower the margin, or use "
            "loss: kto (unpaired)")


def add_cli_args(parser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/dpo_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algorithm.beta=0.2 iterations=2")


def cli_main(args) -> int:
    from agentrl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides, schema=DPOConfig)
    except ConfigError as e:
        raise SystemExit(f"agentrl dpo: {e}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runner = None
    try:
        runner = DPORunner(cfg)
        history = runner.train()
    except (FileNotFoundError, ValueError) as e:  # bad input: missing rollouts, rows without loss_mask, no pairs
        raise SystemExit(f"agentrl dpo: {e}")
    finally:
        if runner is not None:
            runner.close()
    last = history[-1]
    print(f"done: {len(history)} steps over {cfg.iterations} iteration(s), last loss {last['train/loss']:.4f}, "
          f"reward accuracy {last['rewards/accuracies']:.3f}; metrics in {runner.out / 'metrics.jsonl'}")
    return 0
