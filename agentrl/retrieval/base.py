"""The retrieval seam: ``Retriever.search(queries, k) -> list[list[Passage]]``.

Search is batched because every caller has a batch: a GRPO group issues the same search G times,
a server collects concurrent requests. ``CachedRetriever`` makes repeated (query, k) pairs cost
one lookup. Passages render the way Search-R1 shows them to the model (``Doc 1(Title: ...) ...``).
No torch here: the dense backend imports it lazily.
"""
from __future__ import annotations

import collections
import hashlib
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

from agentrl.data import iter_jsonl


@dataclass
class Passage:
    """One retrieved paragraph and its score (higher is better; scales differ per backend)."""

    id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """Search-R1's document text: the quoted title on the first line, then the text."""
        return f'"{self.title}"\n{self.text}'

    @classmethod
    def from_document(cls, doc: dict, score: float = 0.0) -> "Passage":
        """Parse a Search-R1 document (``{"id", "contents"}``), or one with title/text fields."""
        if "contents" in doc and "title" not in doc:
            first, _, rest = str(doc["contents"]).partition("\n")
            title = first.strip()
            if len(title) >= 2 and title[0] == title[-1] == '"':
                title = title[1:-1]
            return cls(str(doc.get("id", "")), title, rest, float(score))
        return cls(str(doc.get("id", "")), str(doc.get("title", "")), str(doc.get("text", "")), float(score))

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Retriever(Protocol):
    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages for each query, best first."""
        ...


def format_passages(passages: list[Passage]) -> str:
    """What the model reads, exactly as Search-R1's ``_passages2string`` renders its wiki-18
    documents (whose first line is the quoted title): ``Doc 1(Title: "Paris") Paris is ...``."""
    return "".join(f'Doc {i}(Title: "{p.title}") {p.text}\n' for i, p in enumerate(passages, 1))


class CachedRetriever:
    """A bounded LRU cache of (query, k) answers in front of any retriever (thread-safe).

    Duplicates inside one batch are searched once too: that is the GRPO case, where the G
    samples of a group often issue the same query in the same batch.
    """

    def __init__(self, retriever: Retriever, max_size: int = 10_000):
        self.retriever = retriever
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self._cache: collections.OrderedDict[tuple[str, int], list[Passage]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        found: dict[str, list[Passage]] = {}
        with self._lock:
            for q in queries:
                hit = self._cache.get((q, k))
                if hit is not None:
                    self._cache.move_to_end((q, k))
                    found[q] = hit
        missing = list(dict.fromkeys(q for q in queries if q not in found))
        if missing:
            for q, result in zip(missing, self.retriever.search(missing, k)):
                found[q] = result
            with self._lock:
                for q in missing:
                    self._cache[(q, k)] = found[q]
                while len(self._cache) > self.max_size:
                    self._cache.popitem(last=False)
        with self._lock:
            self.misses += len(missing)
            self.hits += len(queries) - len(missing)
        return [list(found[q]) for q in queries]

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_size": len(self._cache)}

    def __getattr__(self, name):  # expose the wrapped backend's attributes (passages, manifest)
        if name.startswith("__") or name == "retriever":
            raise AttributeError(name)
        return getattr(self.retriever, name)


# -- corpus helpers -------------------------------------------------------------------------
def iter_corpus(path: str | Path, limit: int | None = None) -> Iterator[Passage]:
    """Stream ``{id, title, text}`` rows (also accepts Search-R1's ``{id, contents}``)."""
    for i, row in enumerate(iter_jsonl(path)):
        if limit is not None and i >= limit:
            return
        p = Passage.from_document(row)
        if not p.id:
            p.id = str(i)
        yield p


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def search_one(retriever: Retriever, query: str, k: int) -> list[Passage]:
    return retriever.search([query], k)[0]


def unique_by_id(passages: Iterable[Passage]) -> list[Passage]:
    seen: set[str] = set()
    return [p for p in passages if not (p.id in seen or seen.add(p.id))]
