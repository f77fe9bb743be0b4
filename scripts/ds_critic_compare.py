"""The DeepSpeed critic vs the one-process critic on the same episodes: launched by
tests/test_critic_deepspeed.py as

    torchrun --nproc_per_node 2 scripts/ds_critic_compare.py --stage 2 --model DIR --out result.json

Eight hand-made episodes (prompt, actions, tool observations, padding; ragged lengths). Rank 0 first
runs the one-process critic (``engine: torch``) on all eight: values, whitened GAE advantages,
targets, two value-loss updates. Then every rank runs the DeepSpeed critic on its own share (5 and 3
episodes: 3 and 2 micro-batches of 2, so the short rank pads with a zero-weighted pass). The values,
advantages (whitened with global statistics), value losses, grad norms and weights after each
update must equal the one-process ones. Then: checkpoint after update 1, load it back after update
2, redo update 2 (must reproduce it). Results go to ``--out`` as JSON (rank 0).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

MICRO = 2


def episodes(vocab: int):
    from agentrl.types import StopReason, Trajectory, TurnRecord

    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate([18, 11, 15, 9, 20, 13, 7, 16]):
        mask = [0] * 3 + [1] * (n - 3)
        if n > 10:
            mask[6:9] = [0, 0, 0]  # a tool observation between two actions
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        out.append(Trajectory(input_ids=ids, loss_mask=mask, logprobs=[-1.0 if m else 0.0 for m in mask], prompt_len=3,
                              turns=[TurnRecord(action="a", observation="o", reward=0.1 * (i % 2)), TurnRecord("b", "")],
                              reward=float(i % 3 == 0), reward_components={}, stop_reason=StopReason.ANSWER,
                              truncated=False, turn_spans=[(3, 6), (9, n)] if n > 10 else [(3, n)]))
    return out


def run_critic(critic, trajs, save_dir=None):
    """Advantages, then two updates (checkpoint after the first with ``save_dir``)."""
    from agentrl.batch import collate

    batch = collate(trajs, 0)
    rewards = torch.tensor([t.reward for t in trajs])
    adv = critic.advantages(trajs, rewards, batch, step=1)
    stats = []
    for k in range(2):
        stats.append(critic.update(batch))
        stats[-1]["weights"] = weights(critic)
        if k == 0 and save_dir:
            critic.save(Path(save_dir))
    return batch, adv, stats


def weights(critic) -> dict:
    if critic.ds is not None:
        return {k: v.float().clone() for k, v in critic.ds.policy_state_dict().items()}
    return {k: v.detach().float().clone() for k, v in critic.model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def rows(batch: dict, key: str) -> list[list[float]]:
    """Each episode's values of ``key`` on its action tokens (ragged: collation widths differ)."""
    keep = batch["loss_mask"].bool()
    return [batch[key][i][keep[i]].tolist() for i in range(keep.shape[0])]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--save-dir")
    args = p.parse_args()
    torch.set_num_threads(1)
    from agentrl.config import parse_config
    from agentrl.critic import Critic

    tree = {"algorithm": {"advantage": "gae", "lambda_policy": 0.9, "gamma": 0.99, "minibatches": 1},
            "critic": {"lr": 1e-3, "grad_clip": 1.0, "cliprange_value": 0.2},
            "optim": {"micro_batch_size": MICRO}, "run": {"steps": 4},
            "rollout": {"group_size": 1, "tasks_per_step": 8},
            "model": {"path": args.model, "init_if_missing": None}}
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    result: dict = {"stage": args.stage, "world_size": world}
    trajs = None
    ref = {}
    if rank == 0:
        t0 = time.perf_counter()
        critic = Critic(parse_config(tree))
        trajs = episodes(critic.vocab_size)
        batch, adv, stats = run_critic(critic, trajs)
        batch["adv"] = adv
        ref = {"values": rows(batch, "values"), "returns": rows(batch, "returns"), "adv": rows(batch, "adv"),
               "stats": stats}
        result["torch_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = parse_config({**tree, "engine": "deepspeed", "deepspeed": {"zero_stage": args.stage}})
    critic = Critic(cfg)
    trajs = episodes(critic.vocab_size)
    share = [trajs[:5], trajs[5:]][rank] if world == 2 else trajs
    batch, adv, stats = run_critic(critic, share, args.save_dir)
    batch["adv"] = adv
    mine = {"values": rows(batch, "values"), "returns": rows(batch, "returns"), "adv": rows(batch, "adv")}
    gathered = critic.comm.all_gather_object(mine)
    result["ds_s"] = time.perf_counter() - t0

    if args.save_dir:
        critic.load(Path(args.save_dir))
        result["load_weight_diff"] = max_diff(stats[0]["weights"], weights(critic))
        redo = critic.update(batch)
        result["redo_loss_diff"] = abs(redo["critic/vf_loss"] - stats[1]["critic/vf_loss"])
        result["redo_weight_diff"] = max_diff(weights(critic), stats[1]["weights"])

    if rank == 0:
        for key in ("values", "returns", "adv"):
            ds_rows = [r for g in gathered for r in g[key]]
            result[f"{key}_diff"] = max(abs(x - y) for a, b in zip(ds_rows, ref[key]) for x, y in zip(a, b))
        for k in ("critic/vf_loss", "critic/grad_norm", "critic/vf_clipfrac", "critic/vpred_mean",
                  "critic/explained_var", "critic/values_mean"):
            result[k] = [[s[k] for s in stats], [s[k] for s in ref["stats"]]]
        result["weight_diff"] = [max_diff(a["weights"], b["weights"]) for a, b in zip(stats, ref["stats"])]
        result["weight_change"] = max_diff(ref["stats"][0]["weights"], ref["stats"][1]["weights"])
        Path(args.out).write_text(json.dumps(result, indent=2))
    critic.ds.barrier()


if __name__ == "__main__":
    main()
