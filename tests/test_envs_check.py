"""``agentrl envs check``: a shipped env passes; deliberately broken envs fail with the fix printed."""
import os
import subprocess
import sys
import time

import gymnasium as gym
import pytest

from agentrl.cli import main
from agentrl.env import ToolEnv
from agentrl.envs_check import run_checks
from agentrl.parsers import HermesParser

TASKS = [{"id": "t0", "question": "1 + 1?", "answer": "2"}, {"id": "t1", "question": "2 + 2?", "answer": "4"}]


class Echo:
    name, description = "echo", "Echo the text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def call(self, arguments):
        return str(arguments.get("text", ""))


class GoodEnv(ToolEnv):
    def __init__(self, max_turns: int = 2, tools=None, render_mode=None):
        super().__init__(TASKS, tools or [Echo()], HermesParser(), max_turns=max_turns, render_mode=render_mode)

    def build_prompt(self, task):
        return [{"role": "user", "content": task["question"]}]

    def score(self, answer, task):
        return {"correct": float(answer == task["answer"])}


class ClockInInfoEnv(GoodEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["started_at"] = time.time()  # the classic mistake: wall-clock time in info
        return obs, reward, terminated, truncated, info


class RaisingEnv(GoodEnv):
    def step(self, action):
        if "<tool_call>" not in action and "<answer>" not in action:
            raise ValueError("cannot parse the action")
        return super().step(action)


class NeedsArgEnv(GoodEnv):
    def __init__(self, database: str, render_mode=None):
        super().__init__(render_mode=render_mode)


class BadSchemaEnv(GoodEnv):
    def __init__(self, render_mode=None, parameters=None):
        bad = Echo()
        bad.parameters = parameters or {"type": "object", "properties": {"text": {"type": "strng"}}}
        super().__init__(tools=[bad], render_mode=render_mode)


BROKEN = {"ClockInInfo": ClockInInfoEnv, "Raising": RaisingEnv, "NeedsArg": NeedsArgEnv, "BadSchema": BadSchemaEnv, "Good": GoodEnv}
for _name, _cls in BROKEN.items():
    if f"checktest/{_name}-v0" not in gym.registry:
        gym.register(f"checktest/{_name}-v0", entry_point=_cls, disable_env_checker=True)


def check(capsys, *argv):
    code = main(["envs", "check", *argv])
    return code, capsys.readouterr().out


def test_a_good_env_passes_every_check(capsys):
    code, out = check(capsys, "checktest/Good-v0")
    assert code == 0, out
    assert [line.split()[:2] for line in out.splitlines()[1:5]] == [
        ["PASS", "make"], ["PASS", "tools"], ["PASS", "text"], ["PASS", "gymnasium"]]
    assert out.splitlines()[-1] == "all 4 checks passed"


def test_wall_clock_in_info_names_the_key_and_the_fix(capsys):
    code, out = check(capsys, "checktest/ClockInInfo-v0", "--seed", "3")
    assert code == 1
    assert "FAIL  text env" in out and "FAIL  gymnasium" in out and "PASS  make" in out
    assert "found:   info['started_at'] differ(s) between two runs of reset(seed=3) + the same step" in out
    assert "fix:     keep wall-clock times, counters and random ids out of info" in out
    assert "Deterministic step info are not equivalent for the same seed and action" in out  # gymnasium's rule
    assert out.splitlines()[-1] == "2 of 4 checks passed"


def test_raising_on_bad_text_says_to_return_an_error_observation(capsys):
    code, out = check(capsys, "checktest/Raising-v0")
    assert code == 1
    assert "rule:    step('just some text with no call and no answe') raised ValueError: cannot parse the action" in out
    assert "rule:    the environment raised ValueError: cannot parse the action" in out  # inside gymnasium's check_env
    assert out.count("fix:     bad model text must never raise: catch the error and return it as an error observation") == 2


def test_a_constructor_failure_skips_the_rest(capsys):
    code, out = check(capsys, "checktest/NeedsArg-v0")
    assert code == 1
    assert "FAIL  make" in out and "missing 1 required positional argument: 'database'" in out
    assert "--kwargs" in out and out.count("SKIP") == 3
    code, out = check(capsys, "checktest/NeedsArg-v0", "--kwargs", '{"database": "x.db"}')
    assert code == 0, out


def test_bad_tool_schemas_point_at_tool_from_function(capsys):
    code, out = check(capsys, "checktest/BadSchema-v0")  # ToolEnv itself refuses an invalid schema
    assert code == 1 and "FAIL  make" in out and "tool 'echo' has an invalid parameters schema" in out
    assert "fix:     give each tool a name, a description and a JSON schema" in out and "tool_from_function" in out
    code, out = check(capsys, "checktest/BadSchema-v0", "--kwargs", '{"parameters": {"type": "array"}}')
    assert code == 1 and "FAIL  tools" in out and "tool 'echo': parameters must be a JSON schema of type 'object'" in out


def test_results_are_data_too():
    results = run_checks("checktest/ClockInInfo-v0")
    assert [(r.name, r.ok) for r in results] == [("make", True), ("tools", True), ("text env", False), ("gymnasium", False)]


def test_bad_arguments_exit_2(capsys):
    code, out = check(capsys, "checktest/Good-v0", "--kwargs", "{max_turns: 2}")
    assert code == 2 and "--kwargs is not valid JSON" in out
    code, out = check(capsys, "checktest/Good-v0", "--kwargs", "[2]")
    assert code == 2 and "must be a JSON object" in out


@pytest.mark.parametrize("env_id, code, expected", [
    ("agentrl/PythonTool-v0", 0, "all 4 checks passed"),
    ("agentrl/NoSuchEnv-v0", 2, "unknown environment id 'agentrl/NoSuchEnv-v0'. Registered ids (agentrl and plugins):"),
])
def test_the_command_line(env_id, code, expected):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "agentrl.cli", "envs", "check", env_id],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert expected in proc.stdout
    if code == 2:
        assert "  agentrl/PythonTool-v0\n" in proc.stdout
