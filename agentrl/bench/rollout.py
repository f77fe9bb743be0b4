"""``agentrl bench rollout``: what the collector costs on top of raw generation, and the engines
side by side.

Part 1 runs the same prompts at the same lengths twice in one process: the engine's raw
``generate`` (EOS off, fixed length, no tools), then the collector playing single-turn episodes
whose only work is that same generation (EOS off, no tool). The ratio of wall times is the
collector's overhead (target <= 1.15x). Part 2 is ``agentrl.bench.engines.bench_engines``
(HFEngine, model.generate, VLLMEngine when importable). Prints tables and writes JSON.
"""
from __future__ import annotations

import json
import time


class _FixedLength:
    """The HF engine with EOS and stop strings off, so both sides generate exactly N tokens."""

    def __init__(self, engine):
        self.engine, self.tokenizer = engine, engine.tokenizer
        engine.eos_ids = set()

    def generate(self, prompts, sampling):
        sampling.stop = ()
        return self.engine.generate(prompts, sampling)


def bench_collector(model_dir: str, n_tasks: int, group_size: int, max_new_tokens: int, repeats: int = 3) -> list[dict]:
    from agentrl.collector import Collector, CollectorConfig, render_prompt
    from agentrl.data import load_jsonl
    from agentrl.engines.base import SamplingParams
    from agentrl.engines.hf import HFEngine
    from agentrl.envs.python_tool import PythonToolEnv

    engine = _FixedLength(HFEngine(model_dir, num_threads=1, batch_size=max(64, n_tasks * group_size)))
    tasks = load_jsonl("package:mul4_test.jsonl", limit=n_tasks)
    make_env = lambda: PythonToolEnv(dataset=tasks, max_turns=1, tool_enabled=False)  # noqa: E731
    probe = make_env()
    prompts = [render_prompt(engine.tokenizer, probe.build_prompt(t)) for t in tasks for _ in range(group_size)]
    config = CollectorConfig(max_new_tokens_per_turn=max_new_tokens, max_total_tokens=4096)
    collector = Collector(make_env, engine, config)
    raw_s, col_s = [], []
    try:
        for r in range(repeats + 1):  # the first round warms up both paths
            start = time.perf_counter()
            engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, seed=r))
            raw = time.perf_counter() - start
            start = time.perf_counter()
            trajs = collector.collect(tasks, group_size, seed=r)
            col = time.perf_counter() - start
            if r:
                raw_s.append(raw)
                col_s.append(col)
    finally:
        collector.close()
    tokens = sum(t.n_generated for t in trajs)
    raw, col = min(raw_s), min(col_s)
    return [{"path": "engine.generate (raw)", "episodes": len(prompts), "tokens": tokens, "seconds": raw,
             "episodes_per_s": len(prompts) / raw, "tokens_per_s": tokens / raw, "x_raw": 1.0},
            {"path": "collector", "episodes": len(trajs), "tokens": tokens, "seconds": col,
             "episodes_per_s": len(trajs) / col, "tokens_per_s": tokens / col, "x_raw": col / raw}]


def _print(title: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def add_cli_args(parser) -> None:
    parser.add_argument("--model", help="model dir (default: the cached tiny model)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-vllm", action="store_true", help="skip VLLMEngine even if importable")
    parser.add_argument("--out", default="bench_rollout.json")


def cli_main(args) -> int:
    from agentrl.bench.engines import bench_engines

    if args.model is None:
        from agentrl.model import cached_tiny_model

        args.model = str(cached_tiny_model())
    collector_rows = bench_collector(args.model, args.tasks, args.group_size, args.max_new_tokens)
    _print("collector overhead over raw generation (same prompts, same lengths, no tools)", collector_rows)
    engine_rows = bench_engines(args.model, args.tasks, args.group_size, args.max_new_tokens,
                                include_vllm=False if args.no_vllm else None)
    _print("engines on the same batch", engine_rows)
    with open(args.out, "w") as f:
        json.dump({"collector": collector_rows, "engines": engine_rows}, f, indent=2)
    print(f"wrote {args.out}")
    return 0
