"""Gymnasium's own tools on every shipped env: ``check_env`` with its default arguments, and
``gymnasium.make_vec`` in sync and async mode (async with its default shared memory)."""
from __future__ import annotations

import multiprocessing as mp
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector.utils import create_shared_memory, read_from_shared_memory, write_to_shared_memory

import agentrl  # noqa: F401  (registers the shipped envs)
from agentrl.env import SharedTexts, TextSpace
from agentrl.retrieval.base import Passage
from agentrl.retrieval.bm25 import BM25Retriever

PASSAGES = [
    Passage("1", "Paris", "Paris is the capital and largest city of France."),
    Passage("2", "Berlin", "Berlin is the capital of Germany."),
    Passage("3", "Rome", "Rome is the capital city of Italy."),
]
ROWS = [{"id": "q1", "question": "What is the capital of France", "answers": ["Paris"]},
        {"id": "q2", "question": "What is the capital of Germany", "answers": ["Berlin"]}]
CALL = {
    "retool": "<code>\n```python\nprint(6 * 7)\n```\n</code>",
    "hermes": '<tool_call>\n{"name": "python", "arguments": {"code": "print(6 * 7)"}}\n</tool_call><|im_end|>',
    "search": "<search>capital of France</search>",
}
SHIPPED = [  # (env id, kwargs kind, call format)
    ("agentrl/PythonTool-v0", "default", "retool"),
    ("agentrl/PythonTool-v0", "hermes", "hermes"),
    ("agentrl/Search-v0", "search", "search"),
    ("agentrl/AutoRefine-v0", "search", "search"),
]
IDS = ["PythonTool", "PythonTool-hermes", "Search", "AutoRefine"]


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever(PASSAGES)  # small, in memory


def env_kwargs(kind: str, retriever) -> dict:
    return {"default": {}, "hermes": {"tool_format": "hermes"},
            "search": {"dataset": ROWS, "retriever": retriever}}[kind]


@pytest.mark.parametrize("env_id,kind,fmt", SHIPPED, ids=IDS)
def test_check_env_passes_with_default_arguments(env_id, kind, fmt, retriever):
    env = gym.make(env_id, **env_kwargs(kind, retriever))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    env.close()
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id,kind,fmt", SHIPPED, ids=IDS)
def test_vector_envs(env_id, kind, fmt, mode, retriever):
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **env_kwargs(kind, retriever))
    try:
        assert envs.single_observation_space == TextSpace(envs.single_observation_space.max_length)
        if mode == "async":
            assert envs.shared_memory  # the default, through TextSpace's shared-memory registration
        prompts, info = envs.reset(seed=0)
        assert isinstance(prompts, tuple) and all(p and p[-1]["role"] == "user" for p in prompts)
        assert len(info["task_id"]) == 2

        obs, reward, terminated, truncated, info = envs.step((CALL[fmt], "<answer>Paris</answer>"))
        assert isinstance(obs, tuple) and not isinstance(obs, SharedTexts)
        assert ("42" if fmt != "search" else "Paris is the capital") in obs[0]
        assert obs[1] == "" and terminated.tolist() == [False, True] and not truncated.any()
        assert info["tool_calls"][0][0]["name"] in ("python", "search")

        obs2, _, terminated, _, _ = envs.step(("no call in this turn", "ignored: this env resets"))
        assert "no tool call or answer" in obs2[0] and obs2[0] != obs[0]  # fresh, not a stale buffer
        assert isinstance(obs2[1], list) and obs2[1][-1]["role"] == "user"  # env 1 autoreset to a new prompt
        assert not terminated.any()
    finally:
        envs.close()


def test_text_shared_memory_round_trip():
    space = TextSpace(16)
    memory = create_shared_memory(space, n=3, ctx=mp.get_context())
    view = read_from_shared_memory(space, memory, n=3)
    values = ["h\u00e9llo\udcff", [{"role": "user", "content": "\u00fc"}], "\U0001f600" * 16]  # 4 bytes a character: fits exactly
    for i, value in enumerate(values):
        write_to_shared_memory(space, i, value, memory)
    assert tuple(view) == tuple(values) and view[-1] == values[-1] and view[1:] == tuple(values[1:])
    write_to_shared_memory(space, 0, "new", memory)
    assert view[0] == "new"  # a live view, as numpy views of a Box buffer are
    with pytest.raises(ValueError, match="shared_memory"):
        write_to_shared_memory(space, 0, [{"role": "user", "content": "x" * 80}], memory)
