"""Search-v0 and AutoRefine-v0 episodes with scripted policies over a real BM25 index."""
from __future__ import annotations

import gymnasium as gym
import pytest

import agentrl.envs  # noqa: F401  (registers the agentrl/ environments)
from agentrl.data import load_jsonl
from agentrl.retrieval.index import load_retriever


@pytest.fixture(scope="module")
def qa_rows(shared_data, bm25_index):
    """Non-heldout HotpotQA questions whose supporting paragraphs are in the 300-paragraph index."""
    titles = {p.title for p in load_retriever(bm25_index).passages}
    rows = [r for r in load_jsonl(shared_data / "qa" / "hotpotqa.jsonl", limit=200)
            if r.get("supporting_titles") and not r["heldout"] and set(r["supporting_titles"]) <= titles]
    assert len(rows) >= 3
    return rows[:5]


def test_search_r1_episode(qa_rows, bm25_index):
    env = gym.make("agentrl/Search-v0", dataset=qa_rows, index_dir=str(bm25_index), max_turns=4)
    row = qa_rows[1]
    prompt, info = env.reset(options={"task": row})
    assert prompt[0]["role"] == "user" and "<search> query </search>" in prompt[0]["content"]
    assert prompt[0]["content"].endswith(f"Question: {row['question']}\n")
    title = row["supporting_titles"][0]
    obs, reward, terminated, truncated, info = env.step(f"<think>I need {title}.</think>\n<search> {title} </search>")
    assert obs.startswith("\n<information>\nDoc 1(Title: ") and f'(Title: "{title}")' in obs
    assert (reward, terminated, truncated) == (0.0, False, False) and info["tool_calls"][0]["arguments"]["query"] == title
    obs, reward, terminated, truncated, info = env.step(f"<think>found it</think>\n<answer> {row['answers'][0]} </answer>")
    assert terminated and reward == 1.0 and info["reward_components"] == {"em": 1.0, "_f1": 1.0}
    env.reset(options={"task": row})
    _, reward, _, _, info = env.step("<answer>certainly not this</answer>")
    assert reward == 0.0 and info["reward_components"]["em"] == 0.0


def test_malformed_searches_become_error_observations(qa_rows, bm25_index):
    env = gym.make("agentrl/Search-v0", dataset=qa_rows, index_dir=str(bm25_index), max_turns=10)
    env.reset(seed=0)
    for action, expected in [("<search></search>", "empty"), ("<search>open question", "unclosed"),
                             ("<search>q</search>" * 50, "too many"), ("I will just ramble", "no tool call")]:
        obs, reward, terminated, truncated, info = env.step(action)
        assert expected in obs and "<information>" in obs and info["n_invalid_calls"] >= 1 and not terminated


def test_autorefine_episode_accumulates_refine_blocks(qa_rows, bm25_index):
    env = gym.make("agentrl/AutoRefine-v0", dataset=qa_rows, index_dir=str(bm25_index), max_turns=4)
    row = qa_rows[1]
    gold = row["answers"][0]
    prompt, _ = env.reset(options={"task": row})
    assert "<refine> and </refine>" in prompt[0]["content"]
    obs, *_ = env.step(f"<think>search</think><search>{row['supporting_titles'][0]}</search>")
    assert obs.startswith("\n<documents>\nDoc 1(Title: ")
    obs, *_ = env.step(f"<refine>The documents say: {gold}.</refine><search>{row['supporting_titles'][-1]}</search>")
    _, reward, terminated, _, info = env.step("<refine>Nothing new.</refine><answer>wrong guess</answer>")
    c = info["reward_components"]
    assert terminated and info["n_refine"] == 2 and c["_refine_hit"] == 1.0 and c["answer"] == 0.0
    assert reward == pytest.approx(0.1) and c["refine"] == pytest.approx(0.1)
    env.reset(options={"task": row})  # refine blocks do not leak into the next episode
    _, reward, _, _, info = env.step(f"<answer>{gold}</answer>")
    assert reward == 1.0 and info["reward_components"]["_refine_hit"] == 0.0 and info["n_refine"] == 0


def test_autorefine_weights_and_metric_are_configurable(qa_rows, bm25_index):
    env = gym.make("agentrl/AutoRefine-v0", dataset=qa_rows, index_dir=str(bm25_index), answer_metric="em",
                   refine_weight=0.5, refine_only_if_wrong=False)
    row = qa_rows[0]
    env.reset(options={"task": row})
    _, reward, _, _, info = env.step(f"<refine>{row['answers'][0]}</refine><answer>{row['answers'][0]}</answer>")
    assert reward == pytest.approx(1.5) and info["reward_components"]["answer"] == 1.0


def test_env_over_the_server(qa_rows, bm25_index):
    from agentrl.retrieval.server import BackgroundServer, create_app

    with BackgroundServer(create_app(load_retriever(bm25_index))) as server:
        local = gym.make("agentrl/Search-v0", dataset=qa_rows, index_dir=str(bm25_index))
        remote = gym.make("agentrl/Search-v0", dataset=qa_rows, retriever_url=server.url)
        for env in (local, remote):
            env.reset(options={"task_index": 0})
        action = f"<search>{qa_rows[0]['question']}</search>"
        assert local.step(action)[0] == remote.step(action)[0]
        remote.close()


def test_clear_errors_without_data_or_retriever(bm25_index):
    with pytest.raises(ValueError, match="pass dataset="):
        gym.make("agentrl/Search-v0")
    with pytest.raises(ValueError, match="exactly one of retriever=, index_dir= or retriever_url="):
        gym.make("agentrl/AutoRefine-v0", dataset=[{"question": "q?", "answers": ["a"]}])


@pytest.mark.parametrize("env_id", ["agentrl/Search-v0", "agentrl/AutoRefine-v0"])
def test_env_checker(env_id, qa_rows, bm25_index):
    checker = pytest.importorskip("agentrl.envs.checker")
    checker.check_text_env(gym.make(env_id, dataset=qa_rows, index_dir=str(bm25_index)))
