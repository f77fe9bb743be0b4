"""A checker for multi-turn text environments, in the spirit of gymnasium's ``check_env``.

Run any new environment through ``check_text_env(env)``: it plays a few hostile turns
(garbage, malformed calls, an empty action, floods of openers, JSON that breaks ``json.loads``)
and checks the API contract, including that a seeded reset and step give the same info (what
gymnasium's ``check_env`` requires: keep wall-clock times out of ``info``). Raises
``TextEnvCheckError`` naming the first broken rule; returns a summary dict when all pass.
For the gymnasium API itself, also run ``gymnasium.utils.env_checker.check_env(env.unwrapped)``.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import data_equivalence

HOSTILE_ACTIONS = (
    "",
    "just some text with no call and no answer",
    "<code>```python\nprint(1)",  # unclosed call
    "<search></search>",  # empty call
    "<tool_call>{not json}</tool_call>",
    "<search>q</search>" * 50,  # a flood of calls
    "\x00\udcff binary junk \ufffd",
    # Fuzzing found these: quadratic scans over openers, and json.loads raising past JSONDecodeError.
    "<code>" * 100_000,
    "<tool_call>" * 50_000,
    '<tool_call>{"name": "python", "arguments": ' + "[" * 100_000 + "}</tool_call>",
    '<tool_call>{"name": "python", "arguments": {"code": ' + "1" * 5000 + "}}</tool_call>",
)


class TextEnvCheckError(AssertionError):
    pass


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise TextEnvCheckError(message)


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    _require(isinstance(prompt, list) and prompt, f"reset() must return a str or a non-empty list of messages, got {type(prompt).__name__}")
    for m in prompt:
        _require(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str),
                 f"each prompt message needs str 'role' and 'content', got {m!r}")


def _check_step(env: gym.Env, result: Any, action: str) -> bool:
    _require(isinstance(result, tuple) and len(result) == 5, "step() must return (observation, reward, terminated, truncated, info)")
    obs, reward, terminated, truncated, info = result
    _require(isinstance(obs, str), f"observation must be str, got {type(obs).__name__} for action {action[:40]!r}")
    _require(env.observation_space.contains(obs), "observation is not in observation_space")
    _require(isinstance(reward, (int, float)) and reward == reward, f"reward must be a finite number, got {reward!r}")
    _require(isinstance(terminated, bool) and isinstance(truncated, bool), "terminated and truncated must be bool")
    _require(isinstance(info, dict), "info must be a dict")
    for key in ("tool_calls", "n_invalid_calls"):
        _require(key in info, f"info must carry {key!r}")
    if terminated or truncated:
        _require("reward_components" in info, "the final step's info must carry 'reward_components'")
    return terminated or truncated


def _step(env: gym.Env, action: str) -> Any:
    try:
        return env.step(action)
    except Exception as e:  # the contract: bad model text never raises
        raise TextEnvCheckError(f"step({action[:40]!r}) raised {type(e).__name__}: {str(e)[:200]}") from e


def check_text_env(env: gym.Env, seed: int = 0, max_steps: int = 64) -> dict:
    """Check ``env`` (made with gymnasium.make or constructed) against the text-env contract."""
    base = env.unwrapped
    _require(isinstance(base, gym.Env), "environment must subclass gymnasium.Env")
    _require(env.action_space.contains("any text"), "action_space must contain arbitrary text")
    _require(hasattr(base, "stop_strings") and all(isinstance(s, str) for s in base.stop_strings),
             "environment must expose stop_strings (the tool-call closers the engine stops at)")

    prompt_a, info = env.reset(seed=seed)
    _check_prompt(prompt_a)
    _require(isinstance(info, dict), "reset() info must be a dict")
    prompt_b, _ = env.reset(seed=seed)
    _require(prompt_a == prompt_b, "reset(seed=s) must be deterministic: two resets with one seed gave different prompts")
    steps = []
    for _ in range(2):
        env.reset(seed=seed)
        steps.append(_step(env, HOSTILE_ACTIONS[1]))
    _require(data_equivalence(steps[0], steps[1]),
             "step() after reset(seed=s) must be deterministic: the same action gave a different observation, reward or "
             "info (keep wall-clock values such as tool latency out of info)")

    invalid = 0
    episodes = 0
    for action in HOSTILE_ACTIONS:
        env.reset(seed=seed)
        for _ in range(max_steps):
            result = _step(env, action)
            invalid += result[4].get("n_invalid_calls", 0)
            if _check_step(env, result, action):
                episodes += 1
                break
        else:
            raise TextEnvCheckError(f"episode did not end within {max_steps} steps of {action[:40]!r}: max_turns is not enforced")
    _require(invalid > 0, "malformed calls must be counted in info['n_invalid_calls']")
    env.close()
    env.close()  # closing twice must be harmless
    return {"episodes": episodes, "invalid_calls_counted": invalid}
