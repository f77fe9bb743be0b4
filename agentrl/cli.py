"""``agentrl`` command line. Each subcommand lives in the module that owns the work.

A command module defines ``add_cli_args(parser)`` and ``cli_main(args) -> int``; modules are
imported only when their command runs, so ``agentrl envs list`` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (command words) -> (module, help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("demo",): ("agentrl.demo", "run one PythonTool episode with a scripted policy and print it"),
    ("envs", "list"): ("agentrl.registry", "list registered environments"),
    ("envs", "check"): ("agentrl.envs_check", "run the env checkers on a registered environment and print what to fix"),
    ("model", "init"): ("agentrl.model", "build a tiny tokenizer + causal LM locally"),
    ("rollout",): ("agentrl.rollout_cli", "collect trajectories with a model and save them as JSONL"),
    ("rollouts", "show"): ("agentrl.rollout_cli:show", "pretty-print a saved trajectory with its loss mask"),
    ("index", "build"): ("agentrl.retrieval.index", "build a BM25 / dense / hybrid index over a JSONL corpus"),
    ("serve", "retrieval"): ("agentrl.retrieval.server", "serve an index over HTTP (Search-R1 API)"),
    ("serve", "engine"): ("agentrl.engines.serve", "serve a rollout engine over an OpenAI-compatible /v1/completions API"),
    ("serve", "sandbox"): ("agentrl.sandbox.server", "serve the Python sandbox over HTTP"),
    ("train",): ("agentrl.trainer", "GRPO training from a YAML config"),
    ("sft",): ("agentrl.sft", "supervised warm start on tool-use traces"),
    ("dpo",): ("agentrl.dpo", "DPO / IPO / KTO preference training from agent rollouts (optionally iterated)"),
    ("eval",): ("agentrl.eval.cli", "evaluate a model on benchmarks: the metrics papers report, with intervals"),
    ("eval", "compare"): ("agentrl.eval.compare", "two eval runs side by side with paired bootstrap intervals"),
    ("plot",): ("agentrl.plot", "plot a run's curves over steps (several runs overlaid) from run folders"),
    ("report",): ("agentrl.report", "one self-contained HTML page: config, curves, eval tables, trajectory browser"),
    ("bench", "sandbox"): ("agentrl.sandbox.bench", "sandbox latency against python -c per call"),
    ("bench", "retrieval"): ("agentrl.retrieval.bench", "retrieval quality and speed"),
    ("bench", "rollout"): ("agentrl.bench.rollout", "collector overhead and engines side by side"),
    ("bench", "trainer"): ("agentrl.bench.trainer", "agentrl GRPO against TRL's GRPOTrainer"),
    ("bench", "update"): ("agentrl.bench.update", "peak memory and time of one policy update: full logits vs chunked"),
    ("bench", "weight-sync"): ("agentrl.bench.weight_sync", "seconds per vLLM weight push: shared memory vs safetensors file"),
    ("bench", "algorithms"): ("agentrl.bench.algorithms", "every RL method on the CPU task: one leaderboard (reward, held-out, time)"),
}


def _load(target: str):
    module, _, prefix = target.partition(":")
    mod = importlib.import_module(module)
    prefix = f"{prefix}_" if prefix else ""
    return getattr(mod, f"{prefix}add_cli_args"), getattr(mod, f"{prefix}cli_main")


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, tuple[str, ...] | None]:
    parser = argparse.ArgumentParser(prog="agentrl", description="Agentic tool-use RL for LLMs")
    for n in (2, 1):
        words = tuple(argv[:n])
        if words in COMMANDS:
            module, help_text = COMMANDS[words]
            sub = argparse.ArgumentParser(prog="agentrl " + " ".join(words), description=help_text)
            _load(module)[0](sub)
            return sub, words
    lines = [f"  agentrl {' '.join(w):<20} {h}" for w, (_, h) in COMMANDS.items()]
    parser.epilog = "commands:\n" + "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, words = build_parser(argv)
    if words is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    args = parser.parse_args(argv[len(words) :])
    return int(_load(COMMANDS[words][0])[1](args) or 0)


if __name__ == "__main__":
    sys.exit(main())
