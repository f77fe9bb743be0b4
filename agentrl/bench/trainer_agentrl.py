"""The agentrl side of ``agentrl bench trainer``: one timed GRPO run in its own process, with
sync rollouts (``agentrl``) or overlapped ones (``agentrl_async``: ``rollout.mode: async``,
``max_staleness: 1``, docs/async_rollouts.md)."""
from __future__ import annotations

import time
from pathlib import Path

from agentrl.bench.trainer_common import peak_rss_mb, steady


def worker_agentrl(spec: dict, workdir: str) -> dict:
    import torch

    from agentrl.config import parse_config
    from agentrl.trainer import GRPOTrainer

    torch.set_num_threads(spec["threads"])
    mode = spec.get("rollout_mode", "sync")
    tool = spec["variant"] == "tool"
    kwargs = {"max_turns": spec["max_turns"], "tool_format": "hermes"} if tool else {"max_turns": 1, "tool_enabled": False}
    tree = {
        "run": {"name": "bench", "output_dir": str(Path(workdir) / f"agentrl_{mode}"), "seed": spec["seed"], "steps": spec["steps"],
                "save_every": spec["steps"] + 1, "report_to": ["jsonl"], "progress": False},
        "model": {"path": spec["model"], "init_if_missing": None},
        "env": {"id": "agentrl/PythonTool-v0", "kwargs": kwargs},
        "rollout": {"tasks_per_step": spec["prompts_per_step"], "group_size": spec["group_size"],
                    "max_new_tokens_per_turn": spec["max_new_tokens"], "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                    "num_threads": spec["threads"], "mode": mode, **({"max_staleness": 1} if mode == "async" else {})},
        "algorithm": {"kl_coef": 0.0, "epochs": 1, "minibatches": 1},
        "optim": {"lr": spec["lr"], "micro_batch_size": spec["prompts_per_step"] * spec["group_size"],
                  "gradient_checkpointing": spec.get("gradient_checkpointing", True),
                  "schedule": "constant", "warmup_steps": 0, "grad_clip": 1.0},
        "guard": {"enabled": False},  # TRL has no collapse guard
    }
    cfg = parse_config(tree)
    t0 = time.perf_counter()
    trainer = GRPOTrainer(cfg)
    startup = time.perf_counter() - t0
    cpu_s: list[float] = []
    train_step = trainer.train_step

    def timed_step():  # process CPU time per step: robust to other load on the machine
        c = time.process_time()
        record = train_step()  # async: + the rollout worker's CPU seconds for this step's batch
        cpu_s.append(time.process_time() - c + record.get("time/rollout_worker_cpu_s", 0.0))
        return record

    trainer.train_step = timed_step
    try:
        history = trainer.train()
    finally:
        trainer.close()
    n_ep = spec["prompts_per_step"] * spec["group_size"]
    step_s = [h["time/step_s"] for h in history]
    tokens = [h.get("rollout/response_tokens", 0.0) * h.get("sampling/groups", spec["prompts_per_step"]) * spec["group_size"]
              for h in history]
    s_per_step, tps = steady(step_s, tokens)
    cpu_per_step = steady(cpu_s, cpu_s)[0]
    phases = {k: sum(h.get(k, 0.0) for h in history[1:] or history) / max(1, len(history[1:] or history))
              for k in ("time/rollout_s", "time/generation_s", "time/tools_s", "time/training_s", "time/wait_rollout_s",
                        "time/weight_push_s", "async/staleness_mean")}
    return {
        "ok": True, "startup_s": startup, "step_s": step_s, "tokens": tokens, "s_per_step": s_per_step,
        "cpu_s": cpu_s, "cpu_s_per_step": cpu_per_step,
        "first_step_s": step_s[0], "tokens_per_s": tps, "gen_tokens_per_episode": sum(tokens) / (n_ep * len(history)),
        "tool_calls_per_episode": sum(h.get("rollout/tool_calls_per_episode", 0.0) for h in history) / len(history),
        "turns_per_episode": sum(h.get("rollout/turns", 0.0) for h in history) / len(history),
        "reward_mean": sum(h.get("reward/mean", 0.0) for h in history) / len(history),
        "phases_s": phases, "phases_per_step": [{k: h.get(k) for k in phases} for h in history],
        "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
        "notes": ["CPU s/step: the trainer process plus the rollout worker's CPU time for each step's batch; "
                  "peak RSS: the trainer process only (tree PSS counts the worker); step 1 includes the worker's "
                  "start-up"] if mode == "async" else [],
    }


def worker_agentrl_async(spec: dict, workdir: str) -> dict:
    """The same run with ``rollout.mode: async``: batch t+1 sampled by a worker process during step t."""
    return worker_agentrl({**spec, "rollout_mode": "async"}, workdir)
