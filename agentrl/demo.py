"""``agentrl demo``: one PythonTool episode played by a scripted policy, printed turn by turn.

The scripted policy stands in for a model: it writes the multiplication as code, reads the
interpreter's output, and copies it into ``<answer>``. It shows the env/tool/sandbox loop
without a model.
"""
from __future__ import annotations

import re

import gymnasium as gym


def scripted_policy(prompt: list[dict], observation: str) -> str:
    if not observation:
        a, b = re.findall(r"\d+", prompt[-1]["content"])[:2]
        return f"<think>I will compute it with Python.</think>\n<code>\n```python\nprint({a} * {b})\n```\n</code>"
    result = re.search(r"<interpreter>\s*(.*?)\s*</interpreter>", observation, re.S)
    return f"<answer>{result.group(1) if result else ''}</answer>"


def run_demo(seed: int = 0, sandbox: str = "local") -> float:
    from rich.console import Console

    console = Console()
    env = gym.make("agentrl/PythonTool-v0", sandbox=sandbox)
    prompt, info = env.reset(seed=seed)
    for m in prompt:
        console.print(f"[bold cyan]{m['role']}[/]: {m['content']}")
    observation, done, reward = "", False, 0.0
    while not done:
        action = scripted_policy(prompt, observation)
        console.print(f"[bold green]assistant[/]: {action}")
        observation, reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if observation:
            latency_ms = env.unwrapped.last_tool_latency_s * 1000
            console.print(f"[bold yellow]environment[/] ({latency_ms:.1f} ms): {observation.strip()}")
    console.print(f"[bold]reward[/] {reward}  components {info['reward_components']}")
    env.close()
    return reward


def add_cli_args(parser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sandbox", default="local", choices=["local", "docker", "remote"])


def cli_main(args) -> int:
    return 0 if run_demo(args.seed, args.sandbox) == 1.0 else 1
