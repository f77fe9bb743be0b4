"""Reciprocal-rank fusion (Cormack et al. 2009) of any retrievers.

RRF uses ranks, not scores, so BM25's unbounded scores and cosine similarities mix without
calibration: ``score(d) = sum_r w_r / (c + rank_r(d))``.
"""
from __future__ import annotations

from typing import Sequence

from agentrl.retrieval.base import Passage, Retriever


class HybridRetriever:
    def __init__(self, retrievers: Sequence[Retriever], weights: Sequence[float] | None = None, c: float = 60.0, depth: int = 20):
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        self.retrievers = list(retrievers)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.retrievers)
        if len(self.weights) != len(self.retrievers):
            raise ValueError(f"{len(self.weights)} weights for {len(self.retrievers)} retrievers")
        self.c = c
        self.depth = depth
        """Each backend's candidates per query (at least k): fusion can only promote what it sees."""

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        depth = max(k, self.depth)
        per_backend = [r.search(list(queries), depth) for r in self.retrievers]
        return [self._fuse([results[i] for results in per_backend], k) for i in range(len(queries))]

    def _fuse(self, rankings: list[list[Passage]], k: int) -> list[Passage]:
        scores: dict[str, float] = {}
        first: dict[str, Passage] = {}
        for weight, ranking in zip(self.weights, rankings):
            for rank, p in enumerate(ranking, 1):
                scores[p.id] = scores.get(p.id, 0.0) + weight / (self.c + rank)
                first.setdefault(p.id, p)
        best = sorted(scores, key=scores.get, reverse=True)[:k]
        return [Passage(i, first[i].title, first[i].text, scores[i]) for i in best]
