"""``agentrl rollout`` (collect and save trajectories) and ``agentrl rollouts show`` (inspect one)."""
from __future__ import annotations

import json


def add_cli_args(parser) -> None:
    parser.add_argument("--env", default="agentrl/PythonTool-v0", help="gymnasium id")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of env options, e.g. '{\"max_turns\": 3}'")
    parser.add_argument("--model", required=True, help="model directory (agentrl model init, or any HF checkpoint)")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("-n", "--n-tasks", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-total-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="rollouts.jsonl")


def cli_main(args) -> int:
    import gymnasium as gym
    from rich.console import Console

    from agentrl.batch import save_trajectories
    from agentrl.collector import Collector, CollectorConfig
    from agentrl.engines import make_engine

    env_kwargs = json.loads(args.env_kwargs)
    engine = make_engine(args.engine, args.model)
    config = CollectorConfig(max_new_tokens_per_turn=args.max_new_tokens, max_total_tokens=args.max_total_tokens,
                             temperature=args.temperature, seed=args.seed)
    probe = gym.make(args.env, **env_kwargs)
    tasks = probe.unwrapped.tasks[: args.n_tasks]
    probe.close()
    collector = Collector(args.env, engine, config, env_kwargs=env_kwargs)
    try:
        trajectories = collector.collect(tasks, group_size=args.group_size, seed=args.seed)
    finally:
        collector.close()
    save_trajectories(args.out, trajectories)
    rewards = [t.reward for t in trajectories]
    Console().print(f"{len(trajectories)} trajectories -> {args.out}; mean reward {sum(rewards) / len(rewards):.3f}, "
                    f"tool calls/episode {sum(t.n_tool_calls for t in trajectories) / len(trajectories):.2f}")
    return 0


def show_add_cli_args(parser) -> None:
    parser.add_argument("file", help="JSONL written by agentrl rollout")
    parser.add_argument("--index", type=int, default=0, help="which trajectory")
    parser.add_argument("--model", help="tokenizer directory, to decode ids (otherwise turn texts are shown)")


def show_cli_main(args) -> int:
    from rich.console import Console
    from rich.text import Text

    from agentrl.batch import load_trajectories

    trajectories = load_trajectories(args.file)
    if not 0 <= args.index < len(trajectories):
        raise SystemExit(f"{args.file} holds {len(trajectories)} trajectories; --index {args.index} is out of range")
    t = trajectories[args.index]
    console = Console()
    console.print(f"[bold]trajectory {args.index}[/] task={t.task_id} group={t.group_id} reward={t.reward:.3f} "
                  f"components={t.reward_components} stop={t.stop_reason.value} truncated={t.truncated}")
    console.print("[green]green: trained on (loss mask 1)[/]  [dim]dim: prompt / tool output (loss mask 0)[/]")
    text = Text()
    if args.model:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        for trained, span in _mask_runs(t.input_ids, t.loss_mask):
            text.append(tok.decode(span), style="green" if trained else "dim")
    else:
        text.append(f"[prompt: {t.prompt_len} tokens]\n", style="dim")
        for turn in t.turns:
            text.append(turn.action, style="green")
            text.append(turn.observation, style="dim")
    console.print(text)
    return 0


def _mask_runs(ids: list[int], mask: list[int]):
    """Consecutive runs of ids with the same mask value."""
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            yield mask[start], ids[start:i]
            start = i
