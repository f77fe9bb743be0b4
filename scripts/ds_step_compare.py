"""DeepSpeed vs TorchEngine on the same data: launched by tests/test_deepspeed.py as

    torchrun --nproc_per_node 2 scripts/ds_step_compare.py --stage 2 --model DIR --out result.json

Rank 0 first runs ``TorchEngine`` on one process over the full fixed batch (GRPO loss, four
micro-batches accumulated, weighted by token share like the trainer); then every rank runs
``DeepSpeedEngine`` on its own half of the batch (data parallel, two micro-batches each), with
the micro-batch weights scaled so that DeepSpeed's rank-average of gradients equals the
full-batch token-mean gradient. Before the real steps, a junk micro-batch is accumulated and
discarded with ``zero_grad`` (the trainer's non-finite-loss path) -- it must leave no trace.
Two optimiser steps; losses, grad norms and weights after each are compared on rank 0.
With ``--save-dir``: checkpoint after step 1, load it back after step 2, redo step 2 (must
reproduce it: weights, Adam moments and LR schedule restored), and check that the saved
``save_pretrained`` weights load with ``AutoModelForCausalLM.from_pretrained`` and equal the
engine's. Results go to ``--out`` as JSON (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

BATCH, SEQ, MICRO = 8, 20, 2


def make_batch(vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (BATCH, SEQ), generator=g)
    lengths = torch.tensor([20, 17, 12, 20, 9, 15, 20, 11])  # ragged: ranks get unequal token counts
    attn = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    prompt = torch.tensor([4, 3, 5, 6, 2, 4, 3, 5])
    loss_mask = ((torch.arange(SEQ)[None, :] >= prompt[:, None]) & attn.bool()).float()
    loss_mask[1, 9:11] = 0.0  # a tool observation inside the response
    adv = torch.tensor([1.0, -0.5, 0.8, -1.2, 0.3, -0.7, 1.5, -0.2])[:, None] * loss_mask
    old = -6.0 + 0.3 * torch.randn(BATCH, SEQ, generator=g)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask, "advantages": adv,
            "old_logprobs": old * loss_mask}


def run_minibatch(engine, batch: dict, index: torch.Tensor, global_tokens: float, world: int) -> float:
    """The trainer's accumulation (GRPOTrainer._minibatch_step), with data-parallel weights."""
    from agentrl.losses import grpo_loss, token_logprobs

    total = 0.0
    for chunk in index.split(MICRO):
        mb = {k: v[chunk] for k, v in batch.items()}
        logits = engine.forward(mb["input_ids"], mb["attention_mask"])
        lp = token_logprobs(logits, mb["input_ids"].to(logits.device))
        loss, _ = grpo_loss(lp, mb["old_logprobs"].to(lp.device), mb["advantages"].to(lp.device),
                            mb["loss_mask"].to(lp.device), clip_low=0.2, clip_high=0.28, aggregation="token_mean")
        weight = float(mb["loss_mask"].sum()) / global_tokens * world
        engine.backward(loss * weight)
        total += float(loss.detach()) * weight
    return total


def snapshot(state: dict) -> dict:
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(set(a) ^ set(b)))
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in a)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--save-dir")
    p.add_argument("--offload", action="store_true")
    p.add_argument("--bf16", action="store_true", help="DeepSpeed bf16 (GPUs); compared against the fp32 reference")
    args = p.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    from agentrl.config import parse_config
    from agentrl.deepspeed_engine import DeepSpeedEngine
    from agentrl.train_engine import TorchEngine

    cfg = parse_config({"engine": "deepspeed", "deepspeed": {"zero_stage": args.stage, "offload": args.offload,
                                                      "bf16": args.bf16},
                        "optim": {"lr": 1e-3, "grad_clip": 1.0, "warmup_steps": 1, "schedule": "cosine",
                                  "weight_decay": 0.01, "micro_batch_size": MICRO},
                        "run": {"steps": 4}})
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    load = lambda: AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)  # noqa: E731
    batch = make_batch(load().config.vocab_size)
    global_tokens = float(batch["loss_mask"].sum())
    result: dict = {"stage": args.stage, "world_size": world}

    ref_states, ref_losses, ref_norms, ref_lrs = [], [], [], []
    if rank == 0:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        ref = TorchEngine(load(), cfg.optim, cfg.run.steps)
        ref.model.train()
        for _ in range(2):
            ref_losses.append(run_minibatch(ref, batch, torch.arange(BATCH), global_tokens, 1))
            ref_norms.append(ref.step())
            ref_lrs.append(ref.lr)
            ref_states.append(snapshot(ref.model.state_dict()))
        result["torch_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    engine = DeepSpeedEngine(load(), cfg)
    engine.model.train()
    result["ds_init_s"] = time.perf_counter() - t0
    shard = torch.arange(BATCH).chunk(world)[rank]  # contiguous halves: 4 sequences each, unequal tokens
    initial = snapshot(engine.policy_state_dict())

    # junk micro-batch accumulated, then discarded: must leave weights, Adam and the schedule untouched
    junk = {k: (v.flip(0) if k != "advantages" else -5 * v) for k, v in batch.items()}
    run_minibatch(engine, junk, shard[:MICRO], global_tokens, world)
    engine.zero_grad()
    result["discard_weight_diff"] = max_diff(initial, engine.policy_state_dict())

    losses, norms, lrs, states = [], [], [], []
    t0 = time.perf_counter()
    for step in range(2):
        local = run_minibatch(engine, batch, shard, global_tokens, world)
        losses.append(engine.all_reduce_sum(local) / world)
        norms.append(engine.step())
        lrs.append(engine.lr)
        states.append(snapshot(engine.policy_state_dict()))
        if step == 0 and args.save_dir:
            engine.save(Path(args.save_dir))
    result["ds_steps_s"] = time.perf_counter() - t0

    if args.save_dir:
        t0 = time.perf_counter()
        engine.load(Path(args.save_dir))
        result["load_weight_diff"] = max_diff(states[0], engine.policy_state_dict())
        redo = run_minibatch(engine, batch, shard, global_tokens, world)
        result["redo_loss"] = engine.all_reduce_sum(redo) / world
        result["redo_norm"] = engine.step()
        result["redo_weight_diff"] = max_diff(states[1], engine.policy_state_dict())
        if rank == 0:
            hf = AutoModelForCausalLM.from_pretrained(args.save_dir, dtype=torch.float32).state_dict()
            result["hf_keys_match"] = sorted(hf) == sorted(states[0])
            result["hf_weight_diff"] = max_diff({k: hf[k] for k in states[0]}, states[0])
        result["save_load_s"] = time.perf_counter() - t0

    if rank == 0:
        result.update(ds_losses=losses, torch_losses=ref_losses, ds_norms=norms, torch_norms=ref_norms,
                      ds_lrs=lrs, torch_lrs=ref_lrs, weight_diff=[max_diff(a, b) for a, b in zip(states, ref_states)],
                      weight_change=max_diff(initial, states[-1]))
        Path(args.out).write_text(json.dumps(result, indent=2))
    engine.barrier()


if __name__ == "__main__":
    main()
