"""``rollout.mode: async``: a real rollout worker process (its own HF copy of the tiny model, its own
Collector over the real PythonTool env and sandbox) on the mul2 tasks, against the sync trainer.

Every async trainer here starts one worker (on CPU a fork of the trainer process, sharing its
imported modules), so the file keeps to four of them (the resume test, with two, is marked slow).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time

import pytest
import torch

from agentrl.async_rollout import RolloutWorkerError
from agentrl.config import ConfigError, load_config
from agentrl.model import cached_tiny_model
from agentrl.trainer import GRPOTrainer


def tiny_cfg(out, *overrides):
    return load_config("configs/retool_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={out}",
        "run.progress=false", "run.report_to=[jsonl]", "env.dataset=package:mul2_train.jsonl",
        "rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens_per_turn=12",
        "rollout.max_total_tokens=200", "env.kwargs.max_turns=2", "run.save_trajectories=4", *overrides])


def run(cfg, resume=False, after=None):
    """Train; ``after(trainer)`` runs before the trainer (and its worker) closes."""
    trainer = GRPOTrainer(cfg, resume=resume)
    try:
        history = trainer.train()
        extra = after(trainer) if after else None
    finally:
        trainer.close()
    return history, trainer, extra


def saved_trajectories(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


# -- (d) the config's rules -------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm"], "rollout.engine: vllm (not yet"),
    (["engine=deepspeed"], "engine: deepspeed"),
    (["algorithm.dynamic_sampling=true"], "algorithm.dynamic_sampling"),
    (["algorithm.advantage=remax", "rollout.group_size=1"], "algorithm.advantage: remax"),
    (["rollout.max_staleness=-1"], "rollout.max_staleness"),
])
def test_async_refuses_what_it_cannot_do(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("configs/retool_tiny_cpu.yaml", ["rollout.mode=async", *overrides])


def test_max_staleness_without_async_is_refused():
    with pytest.raises(ConfigError, match="max_staleness only applies with rollout.mode: async"):
        load_config("configs/retool_tiny_cpu.yaml", ["rollout.max_staleness=2"])
    assert load_config("configs/retool_tiny_cpu.yaml").rollout.mode == "sync"
    with pytest.raises(ConfigError, match="train_threads only applies with rollout.mode: async"):
        load_config("configs/retool_tiny_cpu.yaml", ["rollout.train_threads=2"])


def test_async_defaults_to_the_decoupled_objective_unless_told_otherwise():
    a = load_config("configs/retool_tiny_cpu.yaml", ["rollout.mode=async"]).algorithm
    assert (a.old_logprobs, a.tis, a.tis_cap) == ("recompute", "token", 2.0)
    a = load_config("configs/retool_tiny_cpu.yaml", ["rollout.mode=async", "algorithm.old_logprobs=engine"]).algorithm
    assert (a.old_logprobs, a.tis) == ("engine", "none")  # explicit: kept (the trainer warns)
    a = load_config("configs/retool_tiny_cpu.yaml", ["rollout.mode=async", "algorithm.tis=sequence"]).algorithm
    assert (a.old_logprobs, a.tis) == ("recompute", "sequence")
    a = load_config("configs/retool_tiny_cpu.yaml").algorithm  # sync keeps its own defaults
    assert (a.old_logprobs, a.tis) == ("engine", "none")
    # a dumped async config (every key listed) loads to the same settings
    cfg = load_config("configs/retool_tiny_cpu.yaml", ["rollout.mode=async"])
    from agentrl.config import parse_config

    assert parse_config(cfg.model_dump(mode="json")) == cfg


# -- (b) K=0 is the sync run; (c) the worker samples with the pushed weights -------------------------
@pytest.mark.timeout(1800)  # a no-hang bound: a worker spawn imports torch + transformers, minutes on a loaded machine
def test_k0_async_gives_the_sync_run_and_the_worker_holds_the_pushed_weights(tmp_path):
    # one objective in both; the tiny model scores 0 on every task, so the entropy bonus is what
    # moves the weights (step 2 must be sampled with weights that differ from the initial ones)
    same = ["run.steps=2", "algorithm.old_logprobs=recompute", "algorithm.tis=token", "algorithm.entropy_coef=0.01"]
    sync_hist, _, _ = run(tiny_cfg(tmp_path / "sync", *same))
    name = "model.embed_tokens.weight"

    def probe(trainer):
        return (trainer.rollouts.probe([name]), trainer.model.state_dict()[name].detach().clone(),
                torch.get_num_threads(), _shared_dirty_mb(trainer.rollouts.proc.pid),
                trainer.rollouts.worker_shares_weights)

    threads_before = torch.get_num_threads()
    async_hist, trainer, ((version, tensors), trained, train_threads, shared_mb, aliased) = run(
        tiny_cfg(tmp_path / "async", *same, "rollout.mode=async", "rollout.max_staleness=0"), after=probe)
    sync_t, async_t = saved_trajectories(tmp_path / "sync"), saved_trajectories(tmp_path / "async")
    assert len(sync_t) == len(async_t) == 8
    for s, a in zip(sync_t, async_t):  # the same tasks, seeds and weights: the same episodes, token for token
        assert (a["step"], a["task_id"], a["input_ids"], a["reward"]) == (s["step"], s["task_id"], s["input_ids"], s["reward"])
        # the worker's module is its own: log-probs agree to float32 rounding (seen: 5e-7), not bit for bit
        assert a["logprobs"] == pytest.approx(s["logprobs"], abs=1e-5)
        assert a["policy_version"] == s["policy_version"] == a["step"] - 1
    assert [h["train/loss"] for h in async_hist] == pytest.approx([h["train/loss"] for h in sync_hist], rel=1e-4, abs=1e-6)
    assert [h["async/staleness_max"] for h in async_hist] == [0, 0]
    # step 2 was sampled by the worker after the push of step 1: its behaviour log-probs are the
    # trainer's own (recomputed) ones up to kernel rounding -- not those of the initial weights
    assert async_hist[1]["mismatch/abs_logp_diff_max"] < 1e-4
    assert version == 2 and torch.equal(tensors[name], trained)
    # on CPU the trainer trains on the cores the worker (rollout.num_threads=1) leaves, then gives them back
    assert train_threads == min(threads_before, max(1, len(os.sched_getaffinity(0)) - 1))
    assert torch.get_num_threads() == threads_before
    # on CPU the worker is a fork of the trainer: torch's and transformers' pages are shared with
    # it (a spawned worker shares only the ~5 MB shared-memory weights)
    assert shared_mb > 50, shared_mb
    # K <= 1: the worker's parameters are the shared-memory weights themselves (no third copy)
    assert aliased is True
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(cached_tiny_model()).state_dict()[name]
    assert not torch.equal(trained, initial)  # the probe saw weights that did move
    for key in ("time/wait_rollout_s", "time/weight_push_s", "async/staleness_mean"):
        assert key in async_hist[-1] and key in sync_hist[-1]


def _shared_dirty_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Shared_Dirty:")) / 1024


# -- (a) K=1 overlaps with staleness <= 1; resume restarts the pipeline --------------------------------
@pytest.mark.timeout(1800)
def test_k1_staleness_is_bounded_and_recorded_and_resume_discards_batches_in_flight(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.steps=3", "run.save_every=2", "rollout.mode=async", "rollout.max_staleness=1",
                   "reward.source=majority_vote")
    history, trainer, _ = run(cfg)
    assert [h["async/staleness_max"] for h in history] == [0, 1, 1]  # batch 1 and on: sampled during the previous update
    saved = saved_trajectories(tmp_path)
    for h, step in zip(history, (1, 2, 3)):
        versions = [t["policy_version"] for t in saved if t["step"] == step]
        assert versions and all(step - 1 - v == h["async/staleness_max"] for v in versions)
        assert "ttrl/majority_ratio" in h  # majority-vote rewards are scored in the trainer, on the received batch
    state = json.loads((tmp_path / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())
    assert state["data_pos"] == 4  # 2 trained batches x 2 tasks; batch 3, in flight at the save, is not counted
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000003")  # as if the run had died before its final save

    resumed_hist, resumed, _ = run(tiny_cfg(tmp_path, "run.steps=4", "run.save_every=2", "rollout.mode=async",
                                            "rollout.max_staleness=1", "reward.source=majority_vote"), resume=True)
    assert len(resumed_hist) == 2 and resumed.step == 4
    assert [h["async/staleness_max"] for h in resumed_hist] == [0, 1]  # the restored weights sample step 3's batch
    step3 = [t for t in saved_trajectories(tmp_path) if t["step"] == 3]
    first_run = step3[:4]
    again = step3[4:]  # the resumed run's step 3: the same tasks as the first run's, drawn from data_pos 4
    assert [t["task_id"] for t in again] == [t["task_id"] for t in first_run]
    assert all(t["policy_version"] == 2 for t in again)


@pytest.mark.timeout(1800)
def test_k2_worker_keeps_its_own_copy_and_loads_the_newest_push(tmp_path):
    """K >= 2: the trainer may push while the worker plays a batch, so the worker's module is its
    own copy (not the shared tensors), refreshed from the newest push before each request."""
    name = "model.embed_tokens.weight"

    def probe(trainer):
        return trainer.rollouts.probe([name]), trainer.model.state_dict()[name].detach().clone(), \
            trainer.rollouts.worker_shares_weights

    history, _, ((version, tensors), trained, aliased) = run(
        tiny_cfg(tmp_path, "run.steps=3", "rollout.mode=async", "rollout.max_staleness=2", "algorithm.entropy_coef=0.01"),
        after=probe)
    assert aliased is False
    assert max(h["async/staleness_max"] for h in history) <= 2
    assert version == 3 and torch.equal(tensors[name], trained)


# -- (e) a dead worker is a clear error, not a hang --------------------------------------------------
def test_a_killed_worker_is_a_clear_error_and_an_explicit_engine_ratio_warns(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, "run.steps=2", "rollout.mode=async", "algorithm.old_logprobs=engine",
                   "rollout.train_threads=3")
    threads_before = torch.get_num_threads()
    with caplog.at_level(logging.WARNING, logger="agentrl.trainer"):
        trainer = GRPOTrainer(cfg)
    assert "old_logprobs: engine" in caplog.text and "stale behaviour policy" in caplog.text
    assert torch.get_num_threads() == 3  # an explicit rollout.train_threads is taken as set, even oversubscribed
    try:
        os.kill(trainer.rollouts.proc.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RolloutWorkerError, match=r"rollout worker \(pid \d+\) was killed by signal 9"):
            trainer.train()
        assert time.monotonic() - start < 60
    finally:
        trainer.close()
    assert trainer.rollouts.proc is None  # close() reaped it
    assert torch.get_num_threads() == threads_before
