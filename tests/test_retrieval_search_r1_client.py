"""Search-R1's and AutoRefine's own rollout client against ``agentrl serve retrieval``.

Their rollout loop (``LLMGenerationManager.execute_predictions``) sends every turn's searches in
one ``requests.post`` and indexes ``['result']`` of the answer: any 4xx is a ``KeyError`` that kills
the training step. The client code below is theirs, verbatim; the server is ours, on an ephemeral
loopback port over a real BM25 index. The three situations of ordinary training that used to get
a 422: a turn in which every rollout answered (no queries), a rollout that wrote
``<search></search>`` (an empty query), and a batch of 512 prompts x 5 rollouts = 2560 queries.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Tuple

import httpx
import pytest
import requests

from agentrl.retrieval.base import format_passages
from agentrl.retrieval.index import load_retriever
from agentrl.retrieval.remote import RemoteRetriever
from agentrl.retrieval.server import BackgroundServer, create_app

SERVER_TOPK = 2  # the server's default, unlike the client's topk=3: shows which one answered


@dataclass
class GenerationConfig:
    """The two fields of Search-R1's ``GenerationConfig`` that the copied methods read."""

    search_url: str = None
    topk: int = 3


# ---------------------------------------------------------------------------------------------
# Copied verbatim (the methods' bodies and their trailing whitespace untouched) from
#   repository: https://github.com/PeterGriffinJin/Search-R1
#   commit:     a14dc3a4ffc6fe88c1e95038d9738e21ba3f7a06
#   path:       search_r1/llm_agent/generation.py, lines 353-469 (methods of LLMGenerationManager:
#               execute_predictions, postprocess_predictions, batch_search, _batch_search,
#               _passages2string)
# AutoRefine (https://github.com/syr-cn/AutoRefine, commit 83637883d98801dab1bd2dc36b9186a25efdaa98,
# same path) has the same five methods, byte for byte, except that execute_predictions wraps the
# results in <documents> instead of <information> (line 391); its trainer, like Search-R1's, sends
# retriever.topk=3. The server they are written against is search_r1/search/retrieval_server.py
# (pydantic QueryRequest: queries: List[str], topk: Optional[int] = None, return_scores: bool =
# False; `if not request.topk: request.topk = config.retrieval_topk`; answers {"result": [...]}).
# ---------------------------------------------------------------------------------------------
class SearchR1GenerationManager:
    def __init__(self, config: GenerationConfig):
        self.config = config

    def execute_predictions(self, predictions: List[str], pad_token: str, active_mask=None, do_search=True) -> List[str]:
        """
        Execute predictions across multiple environments.
        NOTE: the function is the actual `step` function in the environment
        NOTE penalty_for_invalid is not included in observation shown to the LLM
        
        Args:
            envs: List of environment instances
            predictions: List of action predictions
            pad_token: Token to use for padding
            
        Returns:
            List of observation strings
        """
        cur_actions, contents = self.postprocess_predictions(predictions)
        next_obs, dones, valid_action, is_search = [], [], [], []
        
        search_queries = [content for action, content in zip(cur_actions, contents) if action == 'search']
        if do_search:
            search_results = self.batch_search(search_queries)
            assert len(search_results) == sum([1 for action in cur_actions if action == 'search'])
        else:
            search_results = [''] * sum([1 for action in cur_actions if action == 'search'])

        for i, (action, active) in enumerate(zip(cur_actions, active_mask)):
            
            if not active:
                next_obs.append('')
                dones.append(1)
                valid_action.append(0)
                is_search.append(0)
            else:
                if action == 'answer':
                    next_obs.append('')
                    dones.append(1)
                    valid_action.append(1)
                    is_search.append(0)
                elif action == 'search':
                    next_obs.append(f'\n\n<information>{search_results.pop(0).strip()}</information>\n\n')
                    dones.append(0)
                    valid_action.append(1)
                    is_search.append(1)
                else:
                    next_obs.append(f'\nMy previous action is invalid. \
If I want to search, I should put the query between <search> and </search>. \
If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again.\n')
                    dones.append(0)
                    valid_action.append(0)
                    is_search.append(0)
            
        assert len(search_results) == 0
            
        return next_obs, dones, valid_action, is_search

    def postprocess_predictions(self, predictions: List[Any]) -> Tuple[List[int], List[bool]]:
        """
        Process (text-based) predictions from llm into actions and validity flags.
        
        Args:
            predictions: List of raw predictions
            
        Returns:
            Tuple of (actions list, validity flags list)
        """
        actions = []
        contents = []
                
        for prediction in predictions:
            if isinstance(prediction, str): # for llm output
                pattern = r'<(search|answer)>(.*?)</\1>'
                match = re.search(pattern, prediction, re.DOTALL)
                if match:
                    content = match.group(2).strip()  # Return only the content inside the tags
                    action = match.group(1)
                else:
                    content = ''
                    action = None
            else:
                raise ValueError(f"Invalid prediction type: {type(prediction)}")
            
            actions.append(action)
            contents.append(content)
            
        return actions, contents

    def batch_search(self, queries: List[str] = None) -> str:
        """
        Batchified search for queries.
        Args:
            queries: queries to call the search engine
        Returns:
            search results which is concatenated into a string
        """
        results = self._batch_search(queries)['result']
        
        return [self._passages2string(result) for result in results]

    def _batch_search(self, queries):
        
        payload = {
            "queries": queries,
            "topk": self.config.topk,
            "return_scores": True
        }
        
        return requests.post(self.config.search_url, json=payload).json()

    def _passages2string(self, retrieval_result):
        format_reference = ''
        for idx, doc_item in enumerate(retrieval_result):
            
            content = doc_item['document']['contents']
            title = content.split("\n")[0]
            text = "\n".join(content.split("\n")[1:])
            format_reference += f"Doc {idx+1}(Title: {title}) {text}\n"

        return format_reference


# --------------------------------------------------------------------- end of the upstream copy


@pytest.fixture(scope="module")
def retriever(bm25_index):
    return load_retriever(bm25_index)


@pytest.fixture(scope="module")
def server(retriever):
    with BackgroundServer(create_app(retriever, topk=SERVER_TOPK, max_batch=64)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return SearchR1GenerationManager(GenerationConfig(search_url=f"{server.url}/retrieve", topk=3))


def _titles(retriever) -> list[str]:
    """Distinct titles that BM25 ranks first when searched for: each answer names its own query."""
    titles = list(dict.fromkeys(p.title for p in retriever.passages))
    return [t for t, r in zip(titles, retriever.search(titles, 1)) if r and r[0].title == t]


def _information(passages) -> str:
    """What execute_predictions shows the model for one search, built from our own renderer."""
    return f"\n\n<information>{format_passages(passages).strip()}</information>\n\n"


def test_a_turn_in_which_every_rollout_answered(client):
    assert client._batch_search([]) == {"result": []}  # Search-R1's server: 200 {"result": []}
    predictions = [f"<think>done</think><answer>answer {i}</answer>" for i in range(8)]
    next_obs, dones, valid_action, is_search = client.execute_predictions(predictions, "<pad>", active_mask=[True] * 8)
    assert next_obs == [""] * 8 and dones == [1] * 8 and valid_action == [1] * 8 and is_search == [0] * 8


def test_empty_search_tags_keep_the_batch_aligned(client, retriever):
    titles = _titles(retriever)
    predictions = [
        f"<search>{titles[0]}</search>",
        "<search></search>",  # a rollout that searched for nothing
        f"<search>{titles[1]}</search>",
        "<search>   \n </search>",  # blank: postprocess_predictions strips it to ''
        "no tag at all",
        f"<search>{titles[2]}</search>",
        "<answer>Paris</answer>",
    ]
    next_obs, dones, valid_action, is_search = client.execute_predictions(predictions, "<pad>", active_mask=[True] * 7)
    assert is_search == [1, 1, 1, 1, 0, 1, 0] and dones == [0, 0, 0, 0, 0, 0, 1]
    for i, title in ((0, titles[0]), (2, titles[1]), (5, titles[2])):
        assert next_obs[i] == _information(retriever.search([title], 3)[0])  # its own results, in its own slot
        assert f'Doc 1(Title: "{title}")' in next_obs[i]
    assert next_obs[1] == next_obs[3] == "\n\n<information></information>\n\n"
    assert "previous action is invalid" in next_obs[4]
    raw = requests.post(client.config.search_url, json={"queries": ["", " ", titles[0]], "topk": 3, "return_scores": True}).json()
    assert [len(r) for r in raw["result"]] == [0, 0, 3] and "empty" in raw["warnings"][0]


def test_512_prompts_x_5_rollouts_in_one_request(client, retriever, server):
    """Search-R1's default batch (AutoRefine's is 1280): one request, 2560 aligned answers."""
    titles = _titles(retriever)
    prompts = [f"{titles[i % len(titles)]} question {i % 97}" for i in range(512)]
    predictions = [f"<think>let me look it up</think><search>{q}</search>" for q in prompts for _ in range(5)]
    assert len(predictions) == 2560
    next_obs, dones, valid_action, is_search = client.execute_predictions(predictions, "<pad>", active_mask=[True] * 2560)
    assert len(next_obs) == 2560 and is_search == [1] * 2560
    expected = {q: _information(r) for q, r in zip(prompts, retriever.search(prompts, 3))}
    assert next_obs == [expected[q] for q in prompts for _ in range(5)]
    stats = httpx.get(f"{server.url}/stats").json()
    assert 0 < stats["largest_batch"] <= 64  # searched in chunks of --max-batch, not 2560 at once


def test_topk_null_missing_or_zero_is_the_server_default(client, retriever):
    title = _titles(retriever)[0]
    url = client.config.search_url
    for body in ({"queries": [title], "topk": None}, {"queries": [title]}, {"queries": [title], "topk": 0}):
        result = requests.post(url, json=body).json()["result"]
        assert len(result[0]) == SERVER_TOPK
    assert [len(r) for r in client._batch_search([title, title])["result"]] == [3, 3]  # the client's own topk


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b'["queries"]', "JSON object"),
    (b'{"queries": "one string"}', "must be a list of strings"),
    (b'{"queries": ["ok", 5]}', "query 1 must be a string"),
    (b'{"queries": [null]}', "query 0 must be a string"),
    (b'{"queries": ["q"], "topk": "3"}', "'topk' must be an integer"),
    (b'{"queries": ["q"], "topk": -1}', "'topk' must be an integer"),
    (b'{"queries": ["q"], "return_scores": "yes"}', "true or false"),
])
def test_truly_malformed_requests_are_still_4xx_with_a_message(client, body, message):
    response = requests.post(client.config.search_url, data=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"]


def test_remote_retriever_splits_batches_for_a_server_with_a_small_limit(retriever):
    titles = _titles(retriever)
    queries = [f"{t} film" for t in titles[:30]]
    expected = [[p.id for p in r] for r in retriever.search(queries, 3)]
    with BackgroundServer(create_app(retriever, cache_size=0, max_batch=4, max_queries=7)) as small:
        over = requests.post(f"{small.url}/retrieve", json={"queries": queries, "topk": 3})
        assert over.status_code == 413 and over.json()["max_queries"] == 7 and "max_queries=7" in over.json()["detail"]
        assert httpx.get(f"{small.url}/health").json()["max_queries"] == 7
        with RemoteRetriever(small.url, cache_size=0) as remote:  # learns the limit from the first 413
            assert [[p.id for p in r] for r in remote.search(queries, 3)] == expected
            assert remote.max_queries == 7 and remote.requests == 1 + 5
            assert [[p.id for p in r] for r in remote.search(queries[:12], 3)] == expected[:12]
            assert remote.requests == 6 + 2  # remembered: no second rejection
        with RemoteRetriever(small.url, cache_size=0, max_queries=5) as remote:  # or told up front
            assert [[p.id for p in r] for r in remote.search(queries, 3)] == expected
            assert remote.requests == 6
        stats = httpx.get(f"{small.url}/stats").json()
        assert stats["largest_batch"] <= 4 and stats["rejected"] == 2
