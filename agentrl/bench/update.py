"""``agentrl bench update``: peak memory and time of one policy update, full logits vs chunked.

One forward + backward of the GRPO loss over a batch shaped like a multi-turn tool episode (a
long prompt, then turns of generated tokens separated by tool observations: loss mask 1 only on
the generated tokens), for two ways of getting the sampled tokens' log-probs and entropy:

* ``full``: the model's ``[B, T, V]`` logits over every position, kept for backward (how the
  trainer worked before; what ``logits_to_keep``-less trainers do);
* ``chunked``: :func:`agentrl.logprobs.trained_token_stats`: LM head only at trained positions,
  in checkpointed chunks;
* ``chunked+gc``: the same with ``optim.gradient_checkpointing`` (decoder layers recomputed in
  backward; TRL's GRPOConfig default).

Each (model, variant) runs in a fresh subprocess, so peak RSS (``ru_maxrss``) is its own; the
table reports the peak above the process's RSS after loading the model and building the batch
(the update's own memory) and the median seconds per update, with chunked / full ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("full", "chunked", "chunked+gc")


def add_cli_args(parser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], help="model sizes (agentrl model init --size)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per update")
    parser.add_argument("--prompt-tokens", type=int, default=384, help="prompt length (loss mask 0)")
    parser.add_argument("--turns", type=int, default=3, help="generated turns, each followed by an observation")
    parser.add_argument("--turn-tokens", type=int, default=64, help="generated tokens per turn (loss mask 1)")
    parser.add_argument("--observation-tokens", type=int, default=64, help="tool-output tokens per turn (loss mask 0)")
    parser.add_argument("--vocab", type=int, default=None,
                        help="resize the model's vocabulary (random new rows) to this size, e.g. 151936 as Qwen's: "
                             "where full logits run out of memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/update.json")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _worker(args, size: str, variant: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from agentrl.logprobs import CausalLMParts, full_logits_token_stats, trained_token_stats
    from agentrl.losses import grpo_loss
    from agentrl.model import cached_tiny_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cached_tiny_model(size), dtype=torch.float32).train()
    if variant.endswith("+gc"):
        from types import SimpleNamespace

        from agentrl.train_engine import enable_gradient_checkpointing

        enable_gradient_checkpointing(model, SimpleNamespace(gradient_checkpointing=True))
    if args.vocab:
        model.resize_token_embeddings(args.vocab)
    vocab = model.config.vocab_size
    T = args.prompt_tokens + args.turns * (args.turn_tokens + args.observation_tokens)
    ids = torch.randint(0, vocab, (args.batch, T))
    attn = torch.ones_like(ids)
    mask = torch.zeros(args.batch, T)
    pos = args.prompt_tokens
    for _ in range(args.turns):
        mask[:, pos:pos + args.turn_tokens] = 1
        pos += args.turn_tokens + args.observation_tokens
    advantages = torch.randn(args.batch)
    old = torch.zeros(args.batch, T)

    def update():
        if variant == "full":
            lp, ent = full_logits_token_stats(model, ids, attn, mask, 1.0, with_entropy=True)
        else:
            lp, ent = trained_token_stats(CausalLMParts(model), ids, attn, mask, 1.0, with_entropy=True)
        old_lp = lp.detach() + old
        loss, _ = grpo_loss(lp, old_lp, advantages, mask, entropy=ent, entropy_coef=0.001)
        loss.backward()
        model.zero_grad(set_to_none=True)

    base = _rss_mb()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        update()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"size": size, "variant": variant, "vocab": vocab, "batch": args.batch, "seq_len": T,
            "trained_tokens": int(mask.sum()), "update_s": statistics.median(times), "base_rss_mb": base,
            "peak_rss_mb": peak, "update_peak_mb": peak - base,
            "full_logits_mb": args.batch * T * vocab * 4 / 2 ** 20}


def cli_main(args) -> int:
    if args.worker:
        print(json.dumps(_worker(args, *args.worker)))
        return 0
    from rich.console import Console
    from rich.table import Table

    rows = []
    for size in args.sizes:
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "agentrl.cli", "bench", "update", "--worker", size, variant,
                   "--batch", str(args.batch), "--prompt-tokens", str(args.prompt_tokens), "--turns", str(args.turns),
                   "--turn-tokens", str(args.turn_tokens), "--observation-tokens", str(args.observation_tokens),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            if args.vocab:
                cmd += ["--vocab", str(args.vocab)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"agentrl bench update: worker {size}/{variant} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    table = Table(title=f"one update: {args.batch} sequences x {rows[0]['seq_len']} tokens "
                        f"({rows[0]['trained_tokens']} trained), forward + backward")
    for col in ("model", "vocab", "variant", "s/update", "update peak MB", "x full time", "x full memory"):
        table.add_column(col)
    for row in rows:
        full = next(r for r in rows if r["size"] == row["size"] and r["variant"] == "full")
        row["time_vs_full"] = row["update_s"] / full["update_s"]
        row["memory_vs_full"] = row["update_peak_mb"] / max(full["update_peak_mb"], 1e-9)
        table.add_row(row["size"], str(row["vocab"]), row["variant"], f"{row['update_s']:.3f}",
                      f"{row['update_peak_mb']:.0f}", f"{row['time_vs_full']:.2f}", f"{row['memory_vs_full']:.2f}")
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0
