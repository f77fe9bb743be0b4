"""GRPO over interleaved thought / call / observation sequences: ``agentrl train CONFIG.yaml``.

One step: collect groups of episodes -> shape rewards (overlong, KL) -> group-relative
advantages -> clipped policy loss over generated tokens only -> optimiser step -> push weights
to the rollout engine -> metrics, checkpoint. Algorithms are chosen by name from registries.
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
from agentrl.metrics import MetricsWriter, ProgressBar, rollout_metrics
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


def make_rollout_engine(cfg: TrainConfig, model, tokenizer):
    if cfg.rollout.engine == "vllm":
        from agentrl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg.model.path, **(cfg.rollout.vllm or {}))
    from agentrl.engines.hf import HFEngine

    # On CPU the rollout engine shares the policy module: no weight copy, no push.
    return HFEngine(model, tokenizer=tokenizer, num_threads=cfg.rollout.num_threads)


class GRPOTrainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        _seed_everything(cfg.run.seed)
        self.out = Path(cfg.run.output_dir)
        self.model, self.tokenizer = load_policy(cfg)
        self.engine = make_train_engine(cfg, self.model)
        self.ref_model = self._reference_model() if cfg.algorithm.kl_coef > 0 else None
        self.rollout = make_rollout_engine(cfg, self.model, self.tokenizer)
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
        self.metrics = MetricsWriter(self.out, tensorboard=cfg.run.tensorboard)

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
        with ProgressBar(self.cfg.run.steps, enabled=self.cfg.run.progress, start=self.step) as bar:
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
        update = self._update(trajs, rewards, ref) if trajs else {"train/skipped": 1.0}
        t_train = time.perf_counter()
        record = {**rollout_metrics(trajs), **sampling, **update}
        record.update({"time/rollout_s": t_rollout - t0, "time/generation_s": self.collector.timing.get("generation_s", 0.0),
                       "time/tools_s": self.collector.timing.get("tools_s", 0.0), "time/reference_s": t_ref - t_rollout,
                       "time/training_s": t_train - t_ref, "time/step_s": t_train - t0})
        self.step += 1
        if self._collapsed(record):
            self._recover(record)
        elif self.cfg.rollout.engine == "vllm":
            self.rollout.update_weights(self.engine.policy_state_dict())
        return record

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
        while tries < (a.max_sampling_tries if a.dynamic_sampling else 1):
            need = r.tasks_per_step - len(kept) // r.group_size
            if need <= 0:
                break
            batch = self.collector.collect(self._next_tasks(need), r.group_size, seed=self.step * 1000 + tries)
            tries += 1
            for i, t in enumerate(batch):  # group ids unique across tries
                t.group_id = t.group_id + len(kept) // r.group_size
            if a.dynamic_sampling:
                rewards, groups = _rewards_groups(batch)
                keep = adv_lib.informative_groups(rewards, groups).tolist()
                dropped += (len(batch) - sum(keep)) // r.group_size
                batch = [t for t, k in zip(batch, keep) if k]
            kept += batch
        stats = {"sampling/tries": float(tries), "sampling/dropped_groups": float(dropped),
                 "sampling/groups": float(len(kept) // r.group_size)}
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

    def _update(self, trajs: list[Trajectory], rewards: torch.Tensor, ref) -> dict:
        a, o = self.cfg.algorithm, self.cfg.optim
        batch = collate(trajs, self.tokenizer.pad_token_id)
        if a.overlong == "mask":
            batch["loss_mask"][torch.tensor([t.truncated for t in trajs])] = 0.0
        batch["advantages"] = self._advantages(trajs, rewards, batch)
        if ref is not None:
            batch["ref_logprobs"] = ref["logprobs"]
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        for _ in range(a.epochs):
            for mb in np.array_split(np.arange(len(trajs)), a.minibatches):
                stats, norm = self._minibatch_step(batch, torch.as_tensor(mb), o.micro_batch_size)
                stats["grad_norm"] = norm
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.model.eval()
        return {f"train/{k}": v / count for k, v in sums.items()}

    def _minibatch_step(self, batch: dict, index: torch.Tensor, micro: int) -> tuple[dict, float]:
        """Gradient accumulation where each micro-batch is weighted by its share of the
        minibatch's tokens (token_mean) or sequences, so the sum equals the minibatch loss."""
        a = self.cfg.algorithm
        total_tokens = batch["loss_mask"][index].sum().clamp(min=1)
        stats: dict[str, float] = {}
        bad = False
        for chunk in index.split(micro):
            mb = {k: v[chunk] for k, v in batch.items()}
            width = int(mb["attention_mask"].sum(-1).max())
            mb = {k: v[:, :width] for k, v in mb.items()}
            logits = self.engine.forward(mb["input_ids"], mb["attention_mask"])
            logprobs = token_logprobs(logits, mb["input_ids"], self.cfg.rollout.temperature)
            # entropy_from_logits[t] belongs to the prediction of token t+1: align it like logprobs
            entropy = torch.nn.functional.pad(entropy_from_logits(logits.detach())[:, :-1], (1, 0))
            loss, m = grpo_loss(
                logprobs, mb["old_logprobs"], mb["advantages"], mb["loss_mask"], mb.get("ref_logprobs"),
                clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
                kl_coef=0.0 if a.kl_in_reward else a.kl_coef, kl_kind=a.kl_kind, aggregation=a.loss_agg,
                max_len=self.cfg.rollout.max_total_tokens, entropy=entropy, entropy_coef=a.entropy_coef)
            weight = (mb["loss_mask"].sum() / total_tokens) if a.loss_agg == "token_mean" else len(chunk) / len(index)
            if self.cfg.guard.inject_nan_at_step == self.step and not self._nan_injected:
                self._nan_injected = True
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                bad = True
                stats["loss"] = float("nan")
                break
            self.engine.backward(loss * weight)
            for k, v in m.items():
                stats[k] = stats.get(k, 0.0) + float(v) * float(weight)
            stats["loss"] = stats.get("loss", 0.0) + loss.item() * float(weight)
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
        if self.cfg.rollout.engine == "vllm":
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
    if history:
        print(f"done: {len(history)} steps, last reward {history[-1].get('reward/mean', float('nan')):.3f}; "
              f"metrics in {trainer.out / 'metrics.jsonl'}")
    return 0
