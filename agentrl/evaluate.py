"""``agentrl eval``: k samples per question, the metrics papers report.

Math (PythonTool): accuracy avg@k (mean correctness over all samples) and pass@k (a question
counts when any of its k samples is correct). QA (Search, AutoRefine): EM and F1, avg@k.
"""
from __future__ import annotations

import json
from collections import defaultdict

from agentrl.types import Trajectory

CORRECTNESS_KEYS = ("correct", "em", "_em")


def _correct(t: Trajectory) -> float:
    for key in CORRECTNESS_KEYS:
        if key in t.reward_components:
            return float(t.reward_components[key])
    return float(t.reward > 0)


def summarize(trajs: list[Trajectory], k: int) -> dict[str, float]:
    groups: dict[int, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        groups[t.group_id].append(t)
    n = len(trajs)
    out = {"questions": float(len(groups)), "k": float(k),
           f"avg@{k}": sum(_correct(t) for t in trajs) / n,
           f"pass@{k}": sum(any(_correct(t) for t in g) for g in groups.values()) / len(groups),
           "reward": sum(t.reward for t in trajs) / n,
           "tool_calls_per_episode": sum(t.n_tool_calls for t in trajs) / n,
           "answered_frac": sum(t.stop_reason.value == "answer" for t in trajs) / n}
    for key in ("f1", "_f1"):
        if any(key in t.reward_components for t in trajs):
            out["f1"] = sum(t.reward_components.get(key, 0.0) for t in trajs) / n
    return out


def evaluate(env_id: str, model, tasks: list[dict], k: int = 1, env_kwargs: dict | None = None,
             temperature: float = 1.0, max_new_tokens: int = 128, max_total_tokens: int = 1024,
             engine: str = "hf", seed: int = 0, batch_tasks: int = 32) -> tuple[dict, list[Trajectory]]:
    from agentrl.collector import Collector, CollectorConfig
    from agentrl.engines import make_engine

    rollout = make_engine(engine, model) if isinstance(model, str) else model
    collector = Collector(env_id, rollout, CollectorConfig(max_new_tokens_per_turn=max_new_tokens, max_total_tokens=max_total_tokens,
                                                           temperature=temperature), env_kwargs=env_kwargs)
    trajs: list[Trajectory] = []
    try:
        for start in range(0, len(tasks), batch_tasks):
            batch = collector.collect(tasks[start:start + batch_tasks], group_size=k, seed=seed + start)
            for t in batch:
                t.group_id += start
            trajs += batch
    finally:
        collector.close()
    return summarize(trajs, k), trajs


def add_cli_args(parser) -> None:
    parser.add_argument("--env", default="agentrl/PythonTool-v0")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of env options")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True, help="JSONL of tasks (e.g. ../shared/data/math/aime24.jsonl)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("-k", type=int, default=1, help="samples per question (avg@k, pass@k)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-total-tokens", type=int, default=1024)
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--out", help="write the summary JSON here")


def cli_main(args) -> int:
    from agentrl.data import load_jsonl

    env_kwargs = json.loads(args.env_kwargs)
    env_kwargs.setdefault("dataset", args.dataset)
    tasks = load_jsonl(args.dataset, limit=args.limit)
    summary, _ = evaluate(args.env, args.model, tasks, args.k, env_kwargs, args.temperature, args.max_new_tokens,
                          args.max_total_tokens, args.engine)
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
