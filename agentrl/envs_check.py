"""``agentrl envs check ID``: run the environment checkers on a registered env and say what to fix.

Checks, each on a fresh ``gymnasium.make(ID, **kwargs)``:

- ``make``: the environment constructs with the given kwargs;
- ``tools``: every tool has a name, a description and a JSON schema that is a valid schema;
- ``text env``: ``agentrl.envs.checker.check_text_env`` (hostile model text, the turn limit,
  a seeded reset and step give the same prompt, observation, reward and info);
- ``gymnasium``: ``gymnasium.utils.env_checker.check_env(env.unwrapped)`` (its warnings are shown).

A failure prints the rule broken and the fix to make; the exit code is 0 when every check passes,
1 otherwise, 2 for an unknown id or bad arguments. No torch is imported.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
from gymnasium.utils.env_checker import check_env, data_equivalence

from agentrl.env import schema_validator
from agentrl.envs.checker import HOSTILE_ACTIONS, check_text_env
from agentrl.registry import load_env_plugins, registered_env_ids

TOOL_FIX = ("give each tool a name, a description and a JSON schema of its arguments "
            "({'type': 'object', 'properties': {...}, 'required': [...]}); agentrl.function_tools.tool_from_function "
            "derives them from a function's type hints and docstring")

# (part of the rule's message, the fix to make): the first match wins.
FIXES: tuple[tuple[str, str], ...] = (
    ("two resets with one seed gave different prompts",
     "draw the task with self.np_random after super().reset(seed=seed) (ToolEnv.reset does), never with random or the clock"),
    ("must be deterministic",
     "keep wall-clock times, counters and random ids out of info and the observation: store them as attributes "
     "(as ToolEnv keeps last_tool_latency_s), and draw any randomness from self.np_random"),
    ("not equivalent for the same seed", "keep wall-clock times, counters and random ids out of info and the observation; "
     "draw any randomness from self.np_random"),
    ("non-deterministic", "draw the task with self.np_random after super().reset(seed=seed), never with random or the clock"),
    ("max_turns is not enforced", "end the episode (truncated=True) after max_turns steps; ToolEnv.step does this"),
    ("n_invalid_calls", "count malformed calls and unknown tools in info['n_invalid_calls'] (ToolEnv.step does)"),
    ("render_mode", "accept render_mode=None in __init__ and pass it on to ToolEnv.__init__ (gymnasium's check_env "
     "remakes the env with each mode in metadata['render_modes'])"),
    ("raised", "bad model text must never raise: catch the error and return it as an error observation "
     "(a tool's exception becomes an 'Error: ...' text)"),
    ("finite number", "score() must return finite float components; the reward is their sum"),
    ("not in observation_space", "keep observations inside observation_space: cut long tool outputs (ToolEnv does, "
     "up to max_observation_chars)"),
    ("within the observation space", "return observations inside observation_space (agentrl.env.TextSpace)"),
    ("observation must be str", "step() must return the observation text as a str"),
    ("stop_strings", "subclass agentrl.env.ToolEnv, or expose stop_strings (the tool-call closers the engine stops at)"),
    ("reward_components", "put the score's components in the final step's info['reward_components'] (ToolEnv does)"),
    ("info must carry", "put 'tool_calls' and 'n_invalid_calls' in every step's info (ToolEnv.step does)"),
    ("prompt message", "build_prompt() must return a list of {'role': str, 'content': str} messages"),
    ("reset() must return", "build_prompt() must return a non-empty list of {'role': str, 'content': str} messages"),
    ("action_space", "use agentrl.env.TextSpace() as action_space: the action is any model text"),
    ("super().reset(seed=seed)", "call super().reset(seed=seed) first in reset()"),
    ("share an object", "return fresh objects from reset() and step() (copy lists and dicts you keep)"),
    ("gymnasium.Env", "subclass gymnasium.Env (agentrl.env.ToolEnv does)"),
)


@dataclass
class CheckResult:
    name: str
    what: str
    ok: bool | None  # None: skipped
    rule: str = ""
    detail: str = ""
    fix: str = ""
    warnings: list[str] = field(default_factory=list)


def fix_for(message: str) -> str:
    for needle, fix in FIXES:
        if needle in message:
            return fix
    return "see the rule above; agentrl/envs/checker.py and gymnasium's env_checker document each check"


def _differences(make: Callable[[], gym.Env], seed: int) -> str:
    """Which of reset info, observation, reward and info differ between two seeded runs."""
    runs = []
    for _ in range(2):
        env = make()
        try:
            _, reset_info = env.reset(seed=seed)
            runs.append((reset_info, env.step(HOSTILE_ACTIONS[1])))
        except Exception:
            return ""
        finally:
            env.close()
    (info_a, step_a), (info_b, step_b) = runs
    diffs = [f"reset info[{k!r}]" for k in sorted(set(info_a) | set(info_b), key=str)
             if not data_equivalence(info_a.get(k), info_b.get(k))]
    for label, a, b in zip(("observation", "reward"), step_a[:2], step_b[:2]):
        if not data_equivalence(a, b):
            diffs.append(label)
    diffs += [f"info[{k!r}]" for k in sorted(set(step_a[4]) | set(step_b[4]), key=str)
              if not data_equivalence(step_a[4].get(k), step_b[4].get(k))]
    return (", ".join(diffs) + f" differ(s) between two runs of reset(seed={seed}) + the same step") if diffs else ""


def _check_tools(env: gym.Env) -> None:
    tools = getattr(env.unwrapped, "tools", None)
    if not isinstance(tools, dict):
        return
    for key, tool in tools.items():
        where = f"tool {key!r}"
        for attr, kind in (("name", str), ("description", str), ("parameters", dict)):
            value = getattr(tool, attr, None)
            if not isinstance(value, kind):
                raise AssertionError(f"{where}: {attr} must be a {kind.__name__}, got {type(value).__name__}")
        if tool.parameters.get("type") != "object":
            raise AssertionError(f"{where}: parameters must be a JSON schema of type 'object' (the call's arguments)")
        try:  # the validator ToolEnv checks call arguments with
            schema_validator(tool)
        except ValueError as e:
            raise AssertionError(str(e)) from e


def _checks(seed: int):
    """(name, what it runs, the check on a fresh env, the fix when it fails: None to look it up)."""
    return (
        ("tools", "name, description and a valid JSON schema per tool", _check_tools, TOOL_FIX),
        ("text env", f"agentrl.envs.checker.check_text_env(env, seed={seed})", lambda env: check_text_env(env, seed=seed), None),
        ("gymnasium", "gymnasium.utils.env_checker.check_env(env.unwrapped)", lambda env: check_env(env.unwrapped), None),
    )


def run_checks(env_id: str, kwargs: dict[str, Any] | None = None, seed: int = 0) -> list[CheckResult]:
    kwargs = dict(kwargs or {})
    make = lambda: gym.make(env_id, **kwargs)  # noqa: E731
    shown = f"gym.make({env_id!r}{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    try:
        make().close()
    except Exception as e:
        rule = f"{type(e).__name__}: {e}"
        fix = TOOL_FIX if "parameters schema" in rule else (
            "make the constructor work with these kwargs (give every argument a default, "
            "or pass the missing ones with --kwargs '{\"name\": value}')")
        return [CheckResult("make", shown, False, rule=rule, fix=fix)] + [CheckResult(n, w, None) for n, w, *_ in _checks(seed)]
    return [CheckResult("make", shown, True)] + [_run_one(*check, make, seed) for check in _checks(seed)]


def _run_one(name: str, what: str, run, default_fix: str | None, make, seed: int) -> CheckResult:
    env = None
    try:
        env = make()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(env)
        return CheckResult(name, what, True, warnings=list(dict.fromkeys(str(w.message) for w in caught)))
    except Exception as e:
        message = str(e) or type(e).__name__
        if not isinstance(e, (AssertionError, gym.error.Error)):  # the env itself raised inside the checker
            message = f"the environment raised {type(e).__name__}: {message}"
            default_fix = default_fix or fix_for("raised")
        detail = _differences(make, seed) if "determinis" in message or "not equivalent" in message else ""
        return CheckResult(name, what, False, rule=message, detail=detail, fix=default_fix or fix_for(message))
    finally:
        try:
            if env is not None:
                env.close()
        except Exception:
            pass


def format_results(env_id: str, results: list[CheckResult]) -> str:
    lines = [f"agentrl envs check {env_id}"]
    for r in results:
        status = "SKIP" if r.ok is None else "PASS" if r.ok else "FAIL"
        lines.append(f"{status}  {r.name:<10} {r.what}")
        if r.ok is False:
            lines.append(f"      rule:    {r.rule}")
            if r.detail:
                lines.append(f"      found:   {r.detail}")
            lines.append(f"      fix:     {r.fix}")
        for w in r.warnings:
            lines.append(f"      warning: {w}")
    passed = sum(r.ok is True for r in results)
    lines.append(f"all {passed} checks passed" if passed == len(results) else f"{passed} of {len(results)} checks passed")
    return "\n".join(lines)


def add_cli_args(parser) -> None:
    parser.add_argument("env_id", help="a registered environment id, e.g. agentrl/PythonTool-v0 (see agentrl envs list)")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for gymnasium.make")
    parser.add_argument("--seed", type=int, default=0, help="seed of the determinism checks")


def cli_main(args) -> int:
    load_env_plugins()
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        print(f"--kwargs is not valid JSON ({e}); pass an object, e.g. --kwargs '{{\"max_turns\": 2}}'")
        return 2
    if not isinstance(kwargs, dict):
        print(f"--kwargs must be a JSON object of keyword arguments, got {type(kwargs).__name__}")
        return 2
    if args.env_id not in gym.registry:
        ids = registered_env_ids()
        print(f"unknown environment id {args.env_id!r}. Registered ids (agentrl and plugins):\n  " + "\n  ".join(ids)
              + "\nA plugin's envs appear once its package is installed and declares an 'agentrl.envs' entry point.")
        return 2
    results = run_checks(args.env_id, kwargs, args.seed)
    print(format_results(args.env_id, results))
    return 0 if all(r.ok for r in results) else 1
