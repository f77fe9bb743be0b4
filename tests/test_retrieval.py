"""Retrieval backends, the LRU cache, index building and manifest checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from agentrl.retrieval.base import CachedRetriever, Passage, format_passages
from agentrl.retrieval.hybrid import HybridRetriever
from agentrl.retrieval.index import IndexMismatchError, _embed_resumable, build_index, load_retriever
from agentrl.tools import ToolError


class FakeRetriever:
    """Answers each query with passages named after it; counts what reached the backend."""

    def __init__(self, names=("a", "b", "c")):
        self.names, self.calls, self.queries = names, 0, []

    def search(self, queries, k):
        self.calls += 1
        self.queries += list(queries)
        return [[Passage(f"{n}", n, f"{q} {n}", 1.0 / (i + 1)) for i, n in enumerate(self.names[:k])] for q in queries]


def test_passage_roundtrip_and_search_r1_format():
    p = Passage("7", "Paris", "Paris is the capital of France.", 1.5)
    assert p.contents == '"Paris"\nParis is the capital of France.'
    back = Passage.from_document({"id": "7", "contents": p.contents})
    assert (back.title, back.text) == ("Paris", p.text)
    assert format_passages([p, p]) == 'Doc 1(Title: "Paris") Paris is the capital of France.\nDoc 2(Title: "Paris") Paris is the capital of France.\n'


def test_cache_makes_a_grpo_group_cost_one_lookup():
    backend = FakeRetriever()
    cached = CachedRetriever(backend, max_size=2)
    out = cached.search(["q"] * 8, 2)  # G samples of one group, one batch
    assert backend.queries == ["q"] and len(out) == 8 and all(r[0].title == "a" for r in out)
    cached.search(["q"], 2)
    assert backend.calls == 1 and cached.hits == 8 and cached.misses == 1
    cached.search(["q"], 3)  # k is part of the key
    cached.search(["x"], 2), cached.search(["y"], 2)  # evicts the oldest entries (bounded)
    assert len(cached._cache) == 2


def test_hybrid_rrf_promotes_agreement():
    fused = HybridRetriever([FakeRetriever(("a", "b", "c")), FakeRetriever(("d", "b", "e"))]).search(["q"], 3)[0]
    assert [p.id for p in fused][0] == "b" and {p.id for p in fused} <= {"a", "b", "c", "d", "e"}


def test_bm25_title_query_ranks_that_paragraph_first(bm25_index):
    r = load_retriever(bm25_index)
    titles = {}
    for p in r.passages:
        titles.setdefault(p.title, []).append(p)
    unique = [ps[0] for ps in titles.values() if len(ps) == 1][:20]
    results = r.search([p.title + " " + p.text[:60] for p in unique], 5)
    assert [res[0].id for res in results] == [p.id for p in unique]
    assert r.search(["the of and"], 3) == [[]]  # stopwords only: no match, no crash
    assert r.search([], 3) == []


def test_bm25_searched_from_many_threads_answers_as_one_thread():
    """The collector's tool threads share one index (ToolUse-v0, an eval suite); a PyStemmer
    instance "must not be called concurrently" (its docstring), so BM25Retriever serialises its
    searches. This checks the answers, not the race (which did not show in a 32-thread probe);
    deep copies (gymnasium's check_env makes them) get a lock of their own."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    from agentrl.data import load_jsonl
    from agentrl.retrieval.bm25 import BM25Retriever

    retriever = BM25Retriever([Passage.from_document(r) for r in load_jsonl("package:kb_corpus.jsonl")])
    queries = [p.title + " founded born running cities" for p in retriever.passages[:200]]
    serial = [retriever.search([q], 3)[0] for q in queries]
    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(lambda q: retriever.search([q], 3)[0], queries))
    assert threaded == serial
    assert copy.deepcopy(retriever).search(queries[:5], 3) == serial[:5]


def test_manifest_records_the_build(bm25_index, shared_data):
    m = json.loads((bm25_index / "manifest.json").read_text())
    assert m["kind"] == "bm25" and m["count"] == 300 and len(m["corpus_sha256"]) == 64 and m["created"]
    load_retriever(bm25_index, corpus=shared_data / "corpus" / "wiki_multihop.jsonl.gz")  # same corpus: fine


def test_manifest_mismatch_and_missing_files(bm25_index, shared_data, tmp_path):
    with pytest.raises(IndexMismatchError, match="'dense' retriever"):
        load_retriever(bm25_index, kind="dense")
    with pytest.raises(IndexMismatchError, match="sha256"):
        load_retriever(bm25_index, corpus=shared_data / "qa" / "bamboogle.jsonl")
    broken = tmp_path / "broken"
    shutil.copytree(bm25_index, broken)
    (broken / "bm25" / "vocab.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.index.json"):
        load_retriever(broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_retriever(broken)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_retriever(tmp_path / "nowhere")
    shutil.copytree(bm25_index, tmp_path / "short")
    lines = (tmp_path / "short" / "passages.jsonl").read_text().splitlines()
    (tmp_path / "short" / "passages.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexMismatchError, match="299 passages"):
        load_retriever(tmp_path / "short")


class CountingEncoder:
    dimension = 4

    def __init__(self):
        self.encoded = 0

    def encode_passages(self, passages):
        self.encoded += len(passages)
        return np.ones((len(passages), 4), dtype="float32")


def test_embedding_resumes_from_saved_chunks(tmp_path):
    from rich.progress import Progress

    passages = [Passage(str(i), "t", "x") for i in range(10)]
    key = {"corpus_sha256": "abc", "model": "m", "chunk_size": 4, "passage_prefix": ""}
    enc = CountingEncoder()
    with Progress(disable=True) as progress:
        task = progress.add_task("e", total=10)
        assert _embed_resumable(passages, enc, tmp_path / "chunks", key, 4, progress, task).shape == (10, 4)
        (tmp_path / "chunks" / "emb_00002.npy").unlink()  # as if killed before the last chunk
        _embed_resumable(passages, enc, tmp_path / "chunks", key, 4, progress, task)
        assert enc.encoded == 10 + 2  # only the missing chunk was embedded again
        _embed_resumable(passages, enc, tmp_path / "chunks", {**key, "model": "other"}, 4, progress, task)
        assert enc.encoded == 12 + 10  # another model's chunks are not reused


def test_loading_an_index_leaves_no_file_open(bm25_index):
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):  # what every env build does
            load_retriever(bm25_index)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_remote_reads_a_request_limit_from_413_or_an_older_servers_422():
    import httpx

    from agentrl.retrieval.remote import _server_limit

    def answer(status, body):
        return httpx.Response(status, json=body)

    assert _server_limit(answer(413, {"detail": "too many", "max_queries": 7}), sent=30) == 7
    assert _server_limit(answer(422, {"detail": "too many queries in one request (2560 > 1024)"}), sent=2560) == 1024
    assert _server_limit(answer(422, {"detail": "'topk' must be an integer"}), sent=30) is None  # another 4xx: not a limit
    assert _server_limit(answer(413, {"max_queries": 30}), sent=30) is None  # no smaller: splitting would not help
    assert _server_limit(httpx.Response(413, text="Request Entity Too Large"), sent=30) is None


def test_remote_unreachable_names_the_url():
    from agentrl.retrieval.remote import RemoteRetriever

    with RemoteRetriever("http://127.0.0.1:9", retries=1, backoff_s=0.01, timeout_s=2) as r:
        with pytest.raises(ToolError, match=r"127\.0\.0\.1:9/retrieve unreachable after 2 attempts"):
            r.search(["anything"], 3)


def test_dense_and_hybrid_index_with_minilm(shared_data, tmp_path):
    """MiniLM on 120 paragraphs (~5-10 s on 2 cores): exact flat IP, then hybrid fusion."""
    pytest.importorskip("sentence_transformers")
    m = build_index(shared_data / "corpus" / "wiki_multihop.jsonl.gz", tmp_path, kind="hybrid", limit=120, show_progress=False)
    assert m["dimension"] == 384 and m["model"] and m["index_type"] == "flat"
    dense = load_retriever(tmp_path, kind="dense")
    target = dense.passages[5]
    top = dense.search([f"{target.title}: {target.text}", target.title], 3)
    assert top[0][0].id == target.id and -1.01 <= top[0][0].score <= 1.01
    hybrid = load_retriever(tmp_path)
    assert hybrid.search([target.title + " " + target.text[:80]], 3)[0][0].id == target.id
    with pytest.raises(IndexMismatchError, match="embedded with"):
        load_retriever(tmp_path, kind="dense", model="/some/other/model")
