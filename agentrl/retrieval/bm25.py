"""BM25 over ``bm25s`` (sparse scipy matrices, numba-free numpy top-k): the default backend.

bm25s precomputes each term's per-document score at index time, so a query costs a sparse
row sum instead of rank_bm25's Python loop over every document.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from agentrl.retrieval.base import Passage


def make_tokenizer(stemmer: str | None = "english", stopwords: str | None = "en"):
    """A function ``texts -> bm25s.Tokenized`` (lower-case, optional stemming and stopwords)."""
    import bm25s

    stem = None
    if stemmer:
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)
    stop = stopwords or []

    def tokenize(texts: list[str], vocab=None):
        kw = dict(stopwords=stop, stemmer=stem, show_progress=False)
        if vocab is None:
            return bm25s.tokenize(texts, **kw)
        return bm25s.tokenize(texts, return_ids=False, **kw)

    return tokenize


class BM25Retriever:
    """Lexical retriever. ``BM25Retriever(passages)`` indexes in memory; ``save``/``load`` persist."""

    def __init__(
        self,
        passages: Sequence[Passage],
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        k1: float = 1.5,
        b: float = 0.75,
        _model=None,
    ):
        import bm25s

        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self.passages = list(passages)
        self.stemmer, self.stopwords = stemmer, stopwords
        self._tokenize = make_tokenizer(stemmer, stopwords)
        # one retriever is often searched from many threads (the collector's tool pool, an eval
        # suite's shared index); a PyStemmer instance "must not be called concurrently"
        self._lock = threading.Lock()
        if _model is None:
            _model = bm25s.BM25(k1=k1, b=b)
            # Titles carry much of a paragraph's identity in multi-hop QA: index them with the text.
            _model.index(self._tokenize([f"{p.title} {p.text}" for p in self.passages]), show_progress=False)
        self.model = _model

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        k = max(1, min(k, len(self.passages)))
        with self._lock:
            return self._search(queries, k)

    def _search(self, queries: list[str], k: int) -> list[list[Passage]]:
        tokens = self._tokenize(list(queries), vocab=True)
        vocab = self.model.vocab_dict
        known = [[t for t in q if t in vocab] for q in tokens]
        results: list[list[Passage]] = [[] for _ in queries]
        rows = [i for i, q in enumerate(known) if q]  # a query of only unknown words matches nothing
        if rows:
            ids, scores = self.model.retrieve([known[i] for i in rows], k=k, show_progress=False, n_threads=1)
            for i, doc_ids, doc_scores in zip(rows, np.asarray(ids), np.asarray(scores)):
                results[i] = [self._passage(int(d), float(s)) for d, s in zip(doc_ids, doc_scores) if s > 0]
        return results

    def __getstate__(self) -> dict:  # copies and pickles (gymnasium's check_env deep-copies envs) get their own lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _passage(self, index: int, score: float) -> Passage:
        p = self.passages[index]
        return Passage(p.id, p.title, p.text, score)

    def save(self, directory: str | Path) -> None:
        self.model.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: str | Path, passages: Sequence[Passage], stemmer="english", stopwords="en") -> "BM25Retriever":
        import bm25s

        model = bm25s.BM25.load(str(directory), show_progress=False)
        return cls(passages, stemmer=stemmer, stopwords=stopwords, _model=model)
