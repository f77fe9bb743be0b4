"""``agentrl/ToolUse-v0``: Python and search in one Hermes chat env, over the fictional knowledge
base, with the real sandbox and the real BM25 index; argument validation against each tool's
JSON schema (``ToolEnv._call``); the schemas in the prompt under the tiny tokenizer's template
and the real Qwen2.5 template."""
from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from transformers import AutoTokenizer

import agentrl  # noqa: F401  (registers the shipped envs)
from agentrl.collector import render_prompt
from agentrl.data import load_jsonl
from agentrl.env import ToolEnv
from agentrl.envs.checker import check_text_env
from agentrl.envs.tool_use import SYSTEM_PROMPT
from agentrl.model import cached_tiny_model
from agentrl.parsers import HermesParser

QWEN25 = Path(__file__).parent / "fixtures" / "chat_templates" / "qwen2.5-7b-instruct.jinja"


def call(name: str, arguments) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call><|im_end|>"


def task_of(kind: str) -> dict:
    return next(r for r in load_jsonl("package:kb_tooluse_train.jsonl") if r["kind"] == kind)


@pytest.fixture(scope="module")
def env():
    env = gym.make("agentrl/ToolUse-v0", topk=1)
    yield env
    env.close()


def test_gymnasium_check_env_and_text_env_checker():
    env = gym.make("agentrl/ToolUse-v0", limit=6)
    check_env(env.unwrapped)
    summary = check_text_env(env)  # closes the env
    assert summary["invalid_calls_counted"] > 0


def test_unknown_tool_and_schema_failures_are_error_observations(env):
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(call("calculator", {"x": 1}))
    assert "unknown tool 'calculator'" in obs and "available: python, search" in obs
    assert info["n_invalid_calls"] == 1 and not (terminated or truncated)
    obs, *_, info = env.step(call("python", {"source": "print(1)"}))
    assert obs == "Error: arguments for 'python' do not match its schema: 'code' is a required property"
    assert info["n_invalid_calls"] == 1
    obs, *_, info = env.step(call("search", {"query": 5}))
    assert obs == "Error: arguments for 'search' do not match its schema: 5 is not of type 'string' (at query)"
    _, reward, *_, info = env.step("<answer>nothing</answer><|im_end|>")
    assert reward == 0.0 and info["reward_components"]["_called_python"] == 0.0  # invalid calls never ran


def test_other_envs_validate_arguments_too():
    env = gym.make("agentrl/PythonTool-v0", tool_format="hermes")
    try:
        env.reset(seed=0)
        obs, *_, info = env.step(call("python", {"code": ["print(1)"]}))
        assert "arguments for 'python' do not match its schema: ['print(1)'] is not of type 'string'" in obs
        assert info["n_invalid_calls"] == 1
    finally:
        env.close()


def test_a_tool_with_an_invalid_schema_fails_at_construction():
    class Broken:
        name, description, parameters = "broken", "x", {"type": "no-such-type"}

        def call(self, arguments):
            return ""

    class Env(ToolEnv):
        def build_prompt(self, task):
            return [{"role": "user", "content": "q"}]

        def score(self, answer, task):
            return {}

    with pytest.raises(ValueError, match="tool 'broken' has an invalid parameters schema"):
        Env([{"id": "t"}], [Broken()], HermesParser())


def play(env, task: dict, actions: list[str]):
    env.reset(options={"task": task})
    outputs = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        outputs.append(obs)
    assert terminated and not truncated
    return outputs, reward, info


def test_a_scripted_correct_episode_of_each_kind_scores_one_with_the_right_tools(env):
    lookup = task_of("lookup")
    outputs, reward, info = play(env, lookup, [call("search", {"query": lookup["entity"]}),
                                                f"<answer>{lookup['answers'][0]}</answer><|im_end|>"])
    assert lookup["answers"][0] in outputs[0] and outputs[0].startswith("Doc 1(Title: ")
    assert reward == 1.0 and info["reward_components"] == {"em": 1.0, "_called_search": 1.0, "_called_python": 0.0,
                                                           "_right_tools": 1.0}

    arith = task_of("arithmetic")
    outputs, reward, info = play(env, arith, [call("python", {"code": f"print({arith['a']} * {arith['b']})"}),
                                              f"<answer>{arith['answers'][0]}</answer><|im_end|>"])
    assert outputs[0] == arith["answers"][0]  # the real sandbox ran it
    assert reward == 1.0 and info["reward_components"]["_right_tools"] == 1.0

    both = task_of("both")
    outputs, reward, info = play(env, both, [call("search", {"query": both["entity"]}),
                                             call("python", {"code": f"print({both['a']} * {both['b']})"}),
                                             f"<answer>{both['answers'][0]}</answer><|im_end|>"])
    assert str(both["a"]) in outputs[0] and outputs[1] == both["answers"][0]
    assert reward == 1.0 and info["reward_components"]["_called_search"] == info["reward_components"]["_called_python"] == 1.0
    assert info["reward_components"]["_right_tools"] == 1.0


def test_wrong_or_extra_tools_and_bare_answers_are_reported(env):
    arith = task_of("arithmetic")
    _, reward, info = play(env, arith, [f"<answer>{arith['answers'][0]}</answer>"])  # right without a tool
    assert reward == 1.0 and info["reward_components"]["_right_tools"] == 0.0
    _, reward, info = play(env, arith, [call("search", {"query": "product"}),
                                        call("python", {"code": f"print({arith['a']} * {arith['b']})"}),
                                        f"<answer>{arith['answers'][0]}</answer>"])
    assert reward == 1.0 and info["reward_components"]["_right_tools"] == 0.0  # an unneeded search
    both = task_of("both")
    _, reward, info = play(env, both, [call("search", {"query": both["entity"]}), "<answer>1</answer>"])
    assert reward == 0.0 and info["reward_components"]["_right_tools"] == 0.0


def test_tools_enabled_is_the_control_the_prompt_does_not_change():
    full = gym.make("agentrl/ToolUse-v0")
    control = gym.make("agentrl/ToolUse-v0", tools_enabled=["python"])
    try:
        assert control.unwrapped.tool_schemas == full.unwrapped.tool_schemas
        control.reset(seed=0)
        obs, *_ = control.step(call("search", {"query": "Trathluth Foundation"}))
        assert obs == "Error: the search tool is disabled in this environment"
        assert control.unwrapped.retriever is None
    finally:
        full.close()
        control.close()
    with pytest.raises(ValueError, match="unknown tool"):
        gym.make("agentrl/ToolUse-v0", tools_enabled=["python", "browser"])


@pytest.mark.parametrize("template", ["tiny", "qwen2.5"])
def test_the_tool_schemas_are_in_the_rendered_prompt(env, template):
    tok = AutoTokenizer.from_pretrained(cached_tiny_model())
    if template == "qwen2.5":
        tok.chat_template = QWEN25.read_text()
    prompt, _ = env.reset(seed=0)
    text = tok.decode(render_prompt(tok, prompt, env.unwrapped.tool_schemas), skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT)
    block = text[text.index("<tools>\n") + len("<tools>"): text.rindex("</tools>")]
    rendered = [json.loads(line) for line in block.strip().splitlines()]  # one JSON schema a line
    assert [t["function"]["name"] for t in rendered] == ["search", "python"]
    assert rendered == env.unwrapped.tool_schemas
    assert rendered[1]["function"]["parameters"]["required"] == ["code"]
    assert text.endswith(prompt[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n")
