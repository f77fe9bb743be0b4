"""The retrieval server on an ephemeral loopback port: API shape, micro-batching, bad input.

Search-R1's own client against this server: tests/test_retrieval_search_r1_client.py.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf

import httpx
import pytest

from agentrl.retrieval.index import load_retriever
from agentrl.retrieval.remote import RemoteRetriever
from agentrl.retrieval.base import Passage
from agentrl.retrieval.server import BackgroundServer, MicroBatcher, create_app, parse_request


@pytest.fixture(scope="module")
def retriever(bm25_index):
    return load_retriever(bm25_index)


@pytest.fixture(scope="module")
def server(retriever):
    with BackgroundServer(create_app(retriever, wait_ms=5.0, info={"kind": "bm25"})) as s:
        yield s


@pytest.fixture()
def http():
    with httpx.Client(timeout=10) as c:
        yield c


def test_search_r1_shape_with_and_without_scores(server, http):
    with_scores = http.post(f"{server.url}/retrieve", json={"queries": ["Shirley Temple", "radio"], "topk": 2, "return_scores": True})
    assert with_scores.status_code == 200
    result = with_scores.json()["result"]
    assert len(result) == 2 and all(len(r) == 2 for r in result)
    item = result[0][0]
    assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
    assert item["document"]["contents"].startswith('"Shirley Temple"\n') and isinstance(item["score"], float)
    bare = http.post(f"{server.url}/retrieve", json={"queries": ["Shirley Temple"], "topk": 2}).json()["result"]
    assert bare[0][0] == item["document"]  # Search-R1: documents only without return_scores
    single = http.post(f"{server.url}/retrieve", json={"query": "Shirley Temple", "topk": 1}).json()
    assert single["result"][0][0]["id"] == item["document"]["id"] and "warnings" not in single


def test_health_and_stats(server, http):
    assert http.get(f"{server.url}/health").json()["status"] == "ok"
    stats = http.get(f"{server.url}/stats").json()
    for key in ("requests", "mean_batch_size", "latency_ms_p50", "latency_ms_p99", "cache_hits"):
        assert key in stats


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"topk": 3}', "missing 'queries'"),
    (b'{"queries": null}', "must be a list of strings"),
    (b'{"queries": "one string"}', "must be a list of strings"),
    (b'{"queries": ["ok", 5]}', "query 1 must be a string"),
    (b'{"queries": ["q"], "topk": -1}', "1..100"),
    (b'{"queries": ["q"], "topk": 101}', "1..100"),
    (b'{"queries": ["q"], "topk": "3"}', "1..100"),
    (b'{"queries": ["q"], "topk": 2.5}', "1..100"),
    (b'{"queries": ["q"], "topk": true}', "1..100"),
    (b'{"queries": ["q"], "return_scores": "yes"}', "true or false"),
])
def test_bad_input_is_422_with_a_message(server, http, body, message):
    response = http.post(f"{server.url}/retrieve", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"]


def test_what_search_r1_accepts_is_accepted(server, http):
    """Search-R1's server: [] -> {"result": []}; blank queries answer nothing in their slot; topk null/0 -> default."""
    assert http.post(f"{server.url}/retrieve", json={"queries": [], "topk": 3}).json() == {"result": []}
    answer = http.post(f"{server.url}/retrieve", json={"queries": ["Shirley Temple", "", "  \n", "radio"], "topk": None}).json()
    assert [len(r) for r in answer["result"]] == [3, 0, 0, 3] and answer["warnings"] == ["queries 1, 2 empty: no passages"]
    assert [len(r) for r in http.post(f"{server.url}/retrieve", json={"query": "radio", "topk": 0}).json()["result"]] == [3]
    assert parse_request(b'{"queries": ["q"], "topk": null, "extra": 1}', default_topk=5) == (["q"], 5, False, [])


def test_large_request_is_searched_in_chunks_and_stays_aligned(server, http, retriever):
    titles = list(dict.fromkeys(p.title for p in retriever.passages))
    queries = [f"{titles[i % len(titles)]} {i}" for i in range(3000)]
    response = http.post(f"{server.url}/retrieve", json={"queries": queries, "topk": 1}, timeout=120)
    assert response.status_code == 200
    expected = [r[0].id if r else None for r in retriever.search(queries, 1)]
    assert [r[0]["id"] if r else None for r in response.json()["result"]] == expected
    assert 0 < http.get(f"{server.url}/stats").json()["largest_batch"] <= 64


def test_over_the_request_limit_is_413_naming_it(http):
    with BackgroundServer(create_app(_Echo(), max_queries=3)) as small:
        response = http.post(f"{small.url}/retrieve", json={"queries": list("abcd")})
        assert response.status_code == 413 and response.json()["max_queries"] == 3 and "4 > 3" in response.json()["detail"]
        assert http.post(f"{small.url}/retrieve", json={"queries": list("abc")}).status_code == 200
    help_text = _serve_help()
    assert "--max-queries" in help_text and "100,000" in help_text and "--topk" in help_text


def _serve_help() -> str:
    import argparse

    from agentrl.retrieval.server import add_cli_args

    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    return parser.format_help()


class _Echo:
    """Answers query q with one passage titled q; records every batch it is asked."""

    def __init__(self):
        self.batches = []

    def search(self, queries, k):
        self.batches.append(list(queries))
        return [[Passage(q, q, f"about {q}", 1.0)] * k for q in queries]


def test_micro_batcher_never_exceeds_max_batch_and_answers_each_request_its_own():
    backend = _Echo()

    async def main():
        batcher = MicroBatcher(backend, max_batch=4, wait_ms=20)
        await batcher.start()
        sizes = [3, 5, 10, 1, 4, 2, 9]
        requests = [[f"r{n}q{i}" for i in range(size)] for n, size in enumerate(sizes)]
        answers = await asyncio.gather(*(batcher.search(qs, 1 + n % 3) for n, qs in enumerate(requests)))
        await batcher.stop()
        return requests, answers

    requests, answers = asyncio.run(main())
    for n, (qs, answer) in enumerate(zip(requests, answers)):
        assert [[p.title for p in r] for r in answer] == [[q] * (1 + n % 3) for q in qs]
    assert max(len(b) for b in backend.batches) <= 4
    assert sorted(q for b in backend.batches for q in b) == sorted(q for qs in requests for q in qs)  # each searched once


def test_megabyte_query_is_truncated_and_said_so(server, http):
    response = http.post(f"{server.url}/retrieve", json={"query": "Shirley Temple " * 70_000, "topk": 1})
    assert response.status_code == 200
    assert "truncated" in response.json()["warnings"][0] and len(response.json()["result"][0]) == 1


def test_concurrent_requests_are_micro_batched_and_answered_correctly(server, retriever, http):
    seen, unique = set(), []
    for p in retriever.passages:
        if p.title not in seen:
            seen.add(p.title)
            unique.append(p)
    targets = unique[:48]
    before = http.get(f"{server.url}/stats").json()

    queries = [f"{p.title} {p.text[:60]}" for p in targets]
    expected = [r[0].id for r in retriever.search(queries, 3)]
    assert sum(e == p.id for e, p in zip(expected, targets)) >= 40  # the queries do find their paragraphs

    def ask(query):
        with httpx.Client(timeout=10) as c:
            r = c.post(f"{server.url}/retrieve", json={"query": query, "topk": 3})
            r.raise_for_status()
            return r.json()["result"][0][0]["id"]

    with cf.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(ask, queries))
    assert ids == expected  # each response answers its own query, not a neighbour's in the batch
    after = http.get(f"{server.url}/stats").json()
    n_batches = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == len(targets) and n_batches < len(targets)


def test_remote_retriever_matches_in_process_and_caches(server, retriever, http):
    queries = ["Corliss Archer radio program", "Kiss and Tell film"]
    with RemoteRetriever(server.url) as remote:
        assert [[p.id for p in r] for r in remote.search(queries, 3)] == [[p.id for p in r] for r in retriever.search(queries, 3)]
        before = http.get(f"{server.url}/stats").json()["requests"]
        remote.search(queries * 4, 3)  # a GRPO group repeating its searches
        assert http.get(f"{server.url}/stats").json()["requests"] == before and remote.hits == 8
    with RemoteRetriever(server.url + "/retrieve", cache_size=0) as remote:  # full endpoint URL works too
        assert remote.search(["Shirley Temple"], 1)[0][0].title == "Shirley Temple"
