"""The retrieval server on an ephemeral loopback port: API shape, micro-batching, bad input."""
from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from agentrl.retrieval.index import load_retriever
from agentrl.retrieval.remote import RemoteRetriever
from agentrl.retrieval.server import BackgroundServer, create_app


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
    (b'{"queries": []}', "non-empty list"),
    (b'{"queries": "one string"}', "non-empty list"),
    (b'{"queries": ["ok", 5]}', "query 1 must be a string"),
    (b'{"queries": ["  "]}', "query 0 is empty"),
    (b'{"queries": ["q"], "topk": 0}', "1..100"),
    (b'{"queries": ["q"], "topk": 101}', "1..100"),
    (b'{"queries": ["q"], "topk": "3"}', "1..100"),
    (b'{"queries": ["q"], "return_scores": "yes"}', "true or false"),
])
def test_bad_input_is_422_with_a_message(server, http, body, message):
    response = http.post(f"{server.url}/retrieve", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"]


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
