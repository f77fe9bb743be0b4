"""What a step does to each collect call's groups before any filtering: ReMax's greedy baselines
(``advantage: remax``) and the majority-vote pseudo-label rewards (``reward.source: majority_vote``).

``GroupScorer`` is owned by the trainer: ``reset()`` at the start of a step, ``score(...)`` after
every collect call (dynamic sampling makes several), ``metrics()`` once the step's groups are in.
Its sums are additive, so ``metrics()`` reduces them over data-parallel ranks.
"""
from __future__ import annotations

import time
from typing import Callable

from agentrl.metrics import sum_dicts
from agentrl.pseudo_labels import apply_majority_vote, ttrl_metrics
from agentrl.types import Trajectory

TTRL_KEYS = ("groups", "ratio", "gold_groups", "label_correct", "gold_episodes", "agree", "gold_reward")


class GroupScorer:
    def __init__(self, cfg, greedy_collector, overlong_penalty: Callable[[Trajectory], float],
                 reduce: Callable[[list[float]], list[float]], world_size: int = 1):
        self.cfg, self.greedy_collector = cfg, greedy_collector
        self.overlong_penalty, self.reduce, self.world_size = overlong_penalty, reduce, world_size
        self.reset()

    def reset(self) -> None:
        self._remax = [0.0] * 4  # greedy reward sum, episodes, generated tokens, seconds
        self._ttrl: dict = {}

    def score(self, tasks: list[dict], batch: list[Trajectory], seed: int) -> None:
        """The pseudo-label rewards and the ReMax greedy baselines (``t.info["remax_baseline"]``)
        of one collect call's groups (group ids still index ``tasks``)."""
        greedy: list[Trajectory] = []
        if self.greedy_collector is not None and tasks:
            start = time.perf_counter()
            greedy = self.greedy_collector.collect(tasks, 1, seed=seed)
            elapsed = time.perf_counter() - start
        if self.cfg.reward.source == "majority_vote" and tasks:
            rc = self.cfg.reward
            sums = apply_majority_vote(batch, tasks, rc.equivalence, rc.replaces, greedy=greedy)
            self._ttrl = sum_dicts([self._ttrl, sums])
        if greedy:
            baselines = {g.group_id: g.reward + self.overlong_penalty(g) for g in greedy}
            for t in batch:
                t.info["remax_baseline"] = baselines[t.group_id]
            added = [sum(baselines.values()), float(len(greedy)), float(sum(g.n_generated for g in greedy)), elapsed]
            self._remax = [a + b for a, b in zip(self._remax, added)]

    def metrics(self) -> dict:
        """``remax/greedy_*`` (the baseline's cost: its reward, generated tokens and generation wall
        time, this step) and ``ttrl/*`` metrics, over all ranks."""
        out = {}
        if self.greedy_collector is not None:
            reward, n, tokens, seconds = self.reduce(self._remax)
            out.update({"remax/greedy_reward_mean": reward / max(n, 1.0), "remax/greedy_tokens": tokens,
                        "remax/greedy_time_s": seconds / self.world_size})  # ranks generate in parallel: their mean
        if self.cfg.reward.source == "majority_vote":
            out.update(ttrl_metrics(dict(zip(TTRL_KEYS, self.reduce([self._ttrl.get(k, 0.0) for k in TTRL_KEYS])))))
        return out

    def close(self) -> None:
        if self.greedy_collector is not None:
            self.greedy_collector.close()
