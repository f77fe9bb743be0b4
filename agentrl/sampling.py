"""The first stage of a training step: tasks in the run's order -> one batch of trajectory groups.

``BatchSampler`` owns what decides *which* episodes a step trains on: the task list and its
seeded order (``data_pos``, saved in checkpoints), the collectors (the sampling one and ReMax's
greedy one), the per-step sampling seeds and the group scoring (``agentrl.group_scoring``:
ReMax baselines, majority-vote rewards). Dynamic sampling (DAPO) lives here too: uninformative
groups are dropped and more are sampled until the batch is full.

The seeds are a function of (step, try, rank) only, so a step samples the same whoever runs it:
a resumed run, or the async rollout worker (``agentrl.async_rollout``), which collects with its
own copy of the policy from requests (tasks, group size, seed) that the trainer draws here.

Data parallel: every rank draws the same tasks (``data_pos`` stays in step) and keeps whole
groups ``rank::world_size``, sampling with a rank-offset seed; dynamic sampling counts
informative groups over all ranks, so every rank makes the same number of tries.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from agentrl import advantages as adv_lib
from agentrl.collector import Collector, CollectorConfig
from agentrl.group_scoring import GroupScorer
from agentrl.types import Trajectory


def env_kwargs(cfg) -> dict:
    """The env's constructor kwargs: ``env.kwargs`` plus ``env.dataset`` / ``env.limit``."""
    kwargs = dict(cfg.env.kwargs)
    if cfg.env.dataset:
        kwargs["dataset"] = cfg.env.dataset
    if cfg.env.limit:
        kwargs["limit"] = cfg.env.limit
    return kwargs


def collector_config(cfg) -> CollectorConfig:
    r = cfg.rollout
    return CollectorConfig(max_new_tokens_per_turn=r.max_new_tokens_per_turn, max_total_tokens=r.max_total_tokens,
                           max_observation_tokens=r.max_observation_tokens, tool_workers=r.tool_workers,
                           temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, seed=cfg.run.seed)


def load_tasks(cfg, kwargs: dict) -> list[dict]:
    """The env's task list (one probe env, closed again)."""
    import gymnasium as gym

    try:
        probe = gym.make(cfg.env.id, **kwargs)
    except ValueError as e:  # PythonTool refuses rows without gold unless told they are expected
        if cfg.reward.source == "majority_vote" and "lacks field" in str(e):
            raise ValueError(f"{e}; with reward.source: majority_vote rows need no gold: "
                             "set env.kwargs.require_answer: false") from None
        raise
    try:
        return list(probe.unwrapped.tasks)
    finally:
        probe.close()


def rewards_groups(trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([t.reward for t in trajs]), torch.tensor([t.group_id for t in trajs])


class BatchSampler:
    """``engine``: the rollout engine the collectors play with; ``all_reduce_sum`` sums a list of
    floats over ranks (the identity on one process); ``overlong_penalty``: DAPO's soft penalty
    of one episode (the ReMax baseline gets it too)."""

    def __init__(self, cfg, engine, overlong_penalty: Callable[[Trajectory], float],
                 all_reduce_sum: Callable[[list[float]], list[float]], rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self._reduce = all_reduce_sum
        kwargs = env_kwargs(cfg)
        self.collector = Collector(cfg.env.id, engine, collector_config(cfg), env_kwargs=kwargs)
        # ReMax's baseline episodes: same env, engine and limits, greedy (its own env pool: one env per task)
        self.greedy_collector = Collector(cfg.env.id, engine, dataclasses.replace(
            self.collector.config, temperature=0.0, top_p=1.0, top_k=0), env_kwargs=kwargs) \
            if cfg.algorithm.advantage == "remax" else None
        self.scorer = GroupScorer(cfg, self.greedy_collector, overlong_penalty, self._reduce, world_size)
        self.tasks = load_tasks(cfg, kwargs)
        self.order = np.random.default_rng(cfg.run.seed).permutation(len(self.tasks)).tolist()
        self.data_pos = 0

    def next_tasks(self, n: int) -> list[dict]:
        picked = []
        for _ in range(n):
            picked.append(self.tasks[self.order[self.data_pos % len(self.order)]])
            self.data_pos += 1
        return picked

    def seed(self, step: int, tries: int = 0) -> int:
        return (step * 1000 + tries) * self.world_size + self.rank

    def sample(self, step: int) -> tuple[list[Trajectory], dict]:
        """Step ``step``'s batch of groups; with dynamic sampling, uninformative groups are dropped and more are sampled
        (at most ``max_sampling_tries`` rounds) until the batch is full."""
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
            tasks = self.next_tasks(need)[self.rank::self.world_size]
            seed = self.seed(step, tries)
            batch = self.collector.collect(tasks, r.group_size, seed=seed) if tasks else []
            for t in batch:
                t.policy_version = step  # sampled with the weights this step trains
            self.scorer.score(tasks, batch, seed)
            tries += 1
            for t in batch:
                t.group_id += next_group
            next_group += len(tasks)
            local_dropped = 0
            if a.dynamic_sampling and batch:
                rewards, groups = rewards_groups(batch)
                keep = adv_lib.informative_groups(rewards, groups).tolist()
                local_dropped = (len(batch) - sum(keep)) // r.group_size
                batch = [t for t, k in zip(batch, keep) if k]
            kept += batch
            if self.world_size > 1:
                new_groups, new_dropped = self._reduce([len(batch) // r.group_size, local_dropped])
                kept_groups += int(round(new_groups))
                dropped += int(round(new_dropped))
            else:
                kept_groups, dropped = len(kept) // r.group_size, dropped + local_dropped
        stats = {"sampling/tries": float(tries), "sampling/dropped_groups": float(dropped),
                 "sampling/groups": float(kept_groups)}
        return kept, {**stats, **self.scorer.metrics()}

    def score(self, tasks: list[dict], batch: list[Trajectory], seed: int) -> dict:
        """Group scoring (majority-vote rewards, in place) and sampling stats of one batch that
        was collected elsewhere: the async rollout worker's (one try, one process)."""
        self.scorer.reset()
        self.scorer.score(tasks, batch, seed)
        stats = {"sampling/tries": 1.0, "sampling/dropped_groups": 0.0,
                 "sampling/groups": float(len(batch) // self.cfg.rollout.group_size)}
        return {**stats, **self.scorer.metrics()}

    def close(self) -> None:
        self.collector.close()
        self.scorer.close()
