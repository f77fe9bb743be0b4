"""The Gymnasium env API, the shipped PythonTool env against the real LocalSandbox, and the checker."""
import subprocess
import sys
import time

import gymnasium as gym
import pytest

import agentrl  # noqa: F401  (registers the shipped envs)
from agentrl.demo import scripted_policy
from agentrl.envs.checker import TextEnvCheckError, check_text_env
from agentrl.envs.python_tool import PythonToolEnv
from agentrl.env import ToolEnv
from agentrl.parsers import retool_parser


@pytest.fixture(scope="module")
def sandbox():
    from agentrl.sandbox import make_sandbox

    with make_sandbox("local") as sb:
        yield sb


def test_full_episode_with_a_scripted_policy(sandbox):
    env = gym.make("agentrl/PythonTool-v0", sandbox=sandbox)
    prompt, info = env.reset(seed=0)
    assert prompt[0]["role"] == "system" and "What is" in prompt[1]["content"]
    obs, reward, terminated, truncated, info = env.step(scripted_policy(prompt, ""))
    assert "<interpreter>" in obs and not terminated and reward == 0.0
    assert info["tool_calls"][0]["name"] == "python" and len(info["tool_outputs"]) == 1 and info["tool_outputs"][0] in obs
    assert "tool_latency_s" not in info and env.unwrapped.last_tool_latency_s > 0  # wall clock stays out of info
    obs, reward, terminated, truncated, info = env.step(scripted_policy(prompt, obs))
    assert terminated and not truncated and reward == 1.0 and info["reward_components"] == {"correct": 1.0}
    env.close()


def test_interpreter_state_persists_within_an_episode_only(sandbox):
    env = PythonToolEnv(sandbox=sandbox, max_turns=5)
    env.reset(seed=0)
    env.step("<code>\n```python\nx = 41\n```\n</code>")
    obs, *_ = env.step("<code>\n```python\nprint(x + 1)\n```\n</code>")
    assert "42" in obs
    env.reset(seed=1)
    obs, *_ = env.step("<code>\n```python\nprint(x)\n```\n</code>")
    assert "NameError" in obs
    env.close()


def test_hostile_code_becomes_an_observation(sandbox):
    env = PythonToolEnv(sandbox=sandbox, max_turns=5, timeout_s=1.0)
    env.reset(seed=0)
    obs, *_ = env.step("<code>while True: pass</code>")
    assert "TimeoutError" in obs
    obs, *_ = env.step("<code>raise ValueError('boom')</code>")
    assert "ValueError: boom" in obs
    env.close()


def test_boxed_answers_are_checked_by_math_equivalence(sandbox):
    env = PythonToolEnv(dataset=[{"id": "h", "question": "half?", "answer": "0.5"}], sandbox=sandbox)
    env.reset(seed=0)
    _, reward, terminated, _, _ = env.step(r"so it is \boxed{\frac{1}{2}}")
    assert terminated and reward == 1.0


def test_max_turns_truncates_and_no_action_gets_feedback(sandbox):
    env = PythonToolEnv(sandbox=sandbox, max_turns=2)
    env.reset(seed=0)
    obs, _, terminated, truncated, info = env.step("I am thinking")
    assert "no tool call or answer" in obs and info["n_invalid_calls"] == 1 and not (terminated or truncated)
    _, reward, terminated, truncated, info = env.step("still thinking")
    assert truncated and not terminated and reward == 0.0 and info["answer"] is None


# Fuzzing found these four: quadratic scans over openers, RecursionError and ValueError out of json.loads.
HOSTILE = {
    "code-openers": "<code>" * 100_000,
    "tool_call-openers": "<tool_call>" * 50_000,
    "nested-arguments": '<tool_call>{"name": "python", "arguments": ' + "[" * 100_000 + "}</tool_call>",
    "5000-digit-int": '<tool_call>{"name": "python", "arguments": {"code": ' + "1" * 5000 + "}}</tool_call>",
}
EXPECTED = {  # what the error observation says, per format
    "retool": {"code-openers": "unclosed <code> tag"},
    "hermes": {"tool_call-openers": "unclosed <tool_call> tag", "nested-arguments": "not valid JSON: nested too deeply",
               "5000-digit-int": "not valid JSON: a number has too many digits"},
}


@pytest.mark.parametrize("tool_format", ["retool", "hermes"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_turns_become_error_observations_quickly(sandbox, tool_format, name):
    env = PythonToolEnv(sandbox=sandbox, tool_format=tool_format, max_turns=5)
    env.reset(seed=0)
    start = time.perf_counter()
    obs, reward, terminated, truncated, info = env.step(HOSTILE[name])
    assert time.perf_counter() - start < 5.0  # a no-hang bound: these take milliseconds now
    assert not (terminated or truncated) and reward == 0.0 and info["n_invalid_calls"] >= 1 and info["tool_calls"] == []
    assert EXPECTED[tool_format].get(name, "no tool call or answer found") in obs
    assert env.observation_space.contains(obs)
    env.close()


def test_a_megabyte_turn_of_openers_steps_quickly(sandbox):
    env = PythonToolEnv(sandbox=sandbox)
    env.reset(seed=0)
    start = time.perf_counter()
    obs, *_ = env.step("<code>" * ((1 << 20) // len("<code>")))
    assert time.perf_counter() - start < 5.0 and "unclosed <code> tag" in obs


def test_tool_output_is_clipped_to_the_observation_space(sandbox):
    env = PythonToolEnv(sandbox=sandbox, max_output_chars=10**6)
    env.reset(seed=0)
    obs, *_ = env.step("<code>print('x' * 200_000)</code>")
    assert len(obs) <= env.observation_space.max_length and env.observation_space.contains(obs)
    assert "[output truncated]" in obs and obs.count("x") > 60_000


def test_shipped_envs_pass_the_checker(sandbox):
    for kwargs in ({}, {"tool_format": "hermes"}, {"tool_enabled": False}):
        summary = check_text_env(gym.make("agentrl/PythonTool-v0", sandbox=sandbox, **kwargs))
        assert summary["episodes"] > 0 and summary["invalid_calls_counted"] > 0


def test_checker_catches_a_broken_env():
    class RaisesOnBadText(ToolEnv):
        def build_prompt(self, task):
            return [{"role": "user", "content": "q"}]

        def score(self, answer, task):
            return {"correct": 0.0}

        def step(self, action):
            if "<answer>" not in action:
                raise ValueError("cannot parse")
            return super().step(action)

    env = RaisesOnBadText([{"id": "1"}], [], retool_parser())
    with pytest.raises(TextEnvCheckError, match="raised ValueError"):
        check_text_env(env)


def test_bad_dataset_and_format_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        PythonToolEnv(dataset=str(tmp_path / "missing.jsonl"), sandbox="local")
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="lacks field"):
        PythonToolEnv(dataset=str(tmp_path / "bad.jsonl"), sandbox="local")
    with pytest.raises(ValueError, match="tool_format"):
        PythonToolEnv(tool_format="xml", sandbox="local")


def test_cli_lists_envs_without_importing_torch():
    code = "import sys; from agentrl.cli import main; main(['envs', 'list']); assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "agentrl/PythonTool-v0" in out.stdout and "agentrl/Search-v0" in out.stdout


def test_demo_command_runs_an_episode():
    out = subprocess.run([sys.executable, "-m", "agentrl.cli", "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "<interpreter>" in out.stdout and "reward" in out.stdout


def test_an_env_that_makes_its_own_sandbox_holds_one_session_worker_reused_across_episodes():
    # a trainer holds one env per episode of a step (64 in the CPU learning run): each with a pool
    # of one-shot workers it never uses, or a spare beside the worker it reuses, was gigabytes of
    # idle interpreters (each with numpy imported)
    env = gym.make("agentrl/PythonTool-v0", max_turns=2)
    try:
        sandbox = env.unwrapped.sandbox
        assert sandbox.workers == 0 and len(sandbox._all) == 0  # nothing starts before the first episode
        pids = []
        for episode in range(3):
            env.reset(seed=episode)
            obs, *_ = env.step("<code>\n```python\nx = globals().get('x', 0) + 6 * 7\nprint(x)\n```\n</code>")
            assert "42" in obs and "84" not in obs  # a fresh interpreter state every episode
            assert len(sandbox._all) == 1
            pids.append(sandbox._all[0].proc.pid)
        assert len(set(pids)) == 1  # the one zygote served every episode's session
    finally:
        env.close()
