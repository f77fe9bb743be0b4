"""The fictional knowledge base of the CPU search runs (agentrl.data.make_kb): what ships is what
the generator makes, the split is by entity, every question is answerable by searching, and the
warm-start traces are byte-for-byte what the environments show."""
from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import gymnasium as gym
import pytest

import agentrl  # noqa: F401  (registers the envs)
from agentrl.data import load_jsonl, make_kb
from agentrl.retrieval.base import Passage
from agentrl.retrieval.bm25 import BM25Retriever

DATA = Path(str(resources.files("agentrl.data")))


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever([Passage.from_document(r) for r in load_jsonl("package:kb_corpus.jsonl")])


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    make_kb.main(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in DATA.glob("kb_*") if p.name != "kb_tooluse_sft.jsonl.gz")
    for name in written:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name}: rerun python -m agentrl.data.make_kb"


def test_train_and_test_share_no_entity():
    test = load_jsonl("package:kb_test_1hop.jsonl") + load_jsonl("package:kb_test_2hop.jsonl")
    test_entities = {r["entity"] for r in test} | {r["bridge"] for r in test if "bridge" in r}
    train = load_jsonl("package:kb_train.jsonl")
    with gzip.open(DATA / "kb_search_sft.jsonl.gz", "rt") as f:  # questions and trained turns (not the
        sft_text = " ".join(m["content"] for line in f  # passages a search returned, which are masked)
                            for m in json.loads(line)["messages"] if m["role"] != "tool")
    assert all(r["heldout"] for r in test) and not any(r.get("heldout") for r in train)
    for row in train:
        assert row["entity"] not in test_entities and row.get("bridge") not in test_entities
    assert not [e for e in test_entities if e in sft_text]
    assert {r["hops"] for r in test} == {1, 2} and len(train) == 512


def test_every_test_question_is_answerable_by_searching(retriever):
    for row in load_jsonl("package:kb_test_1hop.jsonl") + load_jsonl("package:kb_test_2hop.jsonl"):
        top = retriever.search([row["entity"]], 3)[0][0]
        assert top.title == row["entity"]
        if row["hops"] == 2:  # the first hop names the bridge entity; searching it finds the answer
            assert row["bridge"] in top.text
            top = retriever.search([row["bridge"]], 3)[0][0]
            assert top.title == row["bridge"]
        assert row["answers"][0] in top.text


@pytest.mark.parametrize("env_id,traces", [("agentrl/Search-v0", "kb_search_sft.jsonl.gz"),
                                           ("agentrl/AutoRefine-v0", "kb_autorefine_sft.jsonl.gz")])
def test_warm_start_traces_replay_exactly_in_the_environment(retriever, env_id, traces):
    """Each searching trace, replayed turn by turn in the env, gets the very observations it
    holds and the full reward: SFT trains on the sequences RL samples."""
    template = "search_r1_short" if env_id == "agentrl/Search-v0" else "autorefine_short"
    with gzip.open(DATA / traces, "rt") as f:
        rows = [json.loads(line) for line in f][:40]
    searched = 0
    for row in rows:
        messages = row["messages"]
        question = messages[0]["content"].rsplit("Question: ", 1)[1].strip()
        answer = messages[-1]["content"].split("<answer>")[1].split("</answer>")[0].strip()
        env = gym.make(env_id, dataset=[{"question": question, "answers": [answer]}], retriever=retriever,
                       prompt_template=template, max_turns=3)
        prompt, _ = env.reset(seed=0)
        assert prompt[0]["content"] == messages[0]["content"]
        for turn, reply in zip(messages[1::2], messages[2::2] + [None]):
            observation, reward, terminated, _, _ = env.step(turn["content"])
            if reply is not None:
                assert observation == reply["content"]
                searched += 1
        assert terminated and reward >= 1.0
        env.close()
    assert searched >= 10


def test_the_no_retrieval_control_finds_nothing(retriever):
    env = gym.make("agentrl/Search-v0", dataset="package:kb_train.jsonl", retrieval_enabled=False)
    env.reset(seed=0)
    observation, reward, *_ = env.step("<search> Birvam Company </search>")
    assert "No results found." in observation and reward == 0.0
    env.close()


def test_prompt_template_names_and_format_strings():
    rows = [{"question": "Who?", "answers": ["x"]}]
    short = gym.make("agentrl/Search-v0", dataset=rows, retrieval_enabled=False, prompt_template="search_r1_short")
    custom = gym.make("agentrl/Search-v0", dataset=rows, retrieval_enabled=False, prompt_template="Q: {question}")
    assert short.reset(seed=0)[0][0]["content"].startswith("Answer the question. Search with")
    assert custom.reset(seed=0)[0][0]["content"] == "Q: Who?"
    with pytest.raises(ValueError, match="prompt_template must name one of"):
        gym.make("agentrl/Search-v0", dataset=rows, retrieval_enabled=False, prompt_template="serch_r1_short")
