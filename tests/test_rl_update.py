"""The RL update does what its options say: regression tests for what a line-by-line comparison
with verl and TRL found (dynamic-sampling group ids, the reference model, the entropy bonus,
REINFORCE++'s baseline, bf16 master weights, global normalisers, the LR horizon, KL in the
reward, metric extremes, metrics on resume) and the rollout/trainer mismatch handling.

Real parts throughout: the project's tiny model, the PythonTool env with the real sandbox, the
HF engine. Where a test needs rewards that vary inside a group, a scripted policy answers: it
reads each prompt's question and answers right or wrong on a fixed schedule.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from agentrl.batch import collate
from agentrl.engines.base import Completion
from agentrl.logprobs import CausalLMParts, trained_token_stats
from agentrl.model import cached_tiny_model
from agentrl.policy_update import importance_weights, mismatch_keep
from agentrl.trainer import GRPOTrainer, vllm_engine_kwargs
from test_trainer import run, tiny_cfg  # the tiny-run config the trainer tests use


class ScriptedPolicy:
    """A rollout engine that answers each prompt's multiplication right or wrong, in call order,
    following ``schedule`` (1 = right). Log-probs are the trainer-side placeholder -1."""

    def __init__(self, tokenizer, tasks, schedule):
        self.tokenizer = tokenizer
        self.answers = {t["question"]: t["answer"] for t in tasks}
        self.schedule = list(schedule)

    def generate(self, prompts, sampling):
        out = []
        for ids in prompts:
            text = self.tokenizer.decode(ids)
            answer = next(a for q, a in self.answers.items() if q in text)
            right = self.schedule.pop(0)
            ids = self.tokenizer.encode(f"<answer>{answer if right else '0'}</answer>", add_special_tokens=False)
            out.append(Completion(ids, [-1.0] * len(ids), "stop", "</answer>"))
        return out

    def update_weights(self, state_dict):
        pass


def fixed_batch(trainer, rewards=None, n_tasks=2, group_size=2):
    """A real collected batch from the trainer's own collector (tiny model, real env)."""
    trajs = trainer.collector.collect(trainer.tasks[:n_tasks], group_size, seed=123)
    rewards = torch.tensor(rewards if rewards is not None else [float(i % 2) for i in range(len(trajs))])
    batch = collate(trajs, trainer.tokenizer.pad_token_id)
    trainer._prepare(batch, trajs, rewards, None)
    return trajs, batch


def mean_entropy(model, batch):
    with torch.no_grad():
        _, ent = trained_token_stats(CausalLMParts(model), batch["input_ids"], batch["attention_mask"],
                                     batch["loss_mask"], with_entropy=True)
    return float(ent.sum() / batch["loss_mask"].sum())


# -- 1. dynamic sampling ---------------------------------------------------------------------


def test_dynamic_sampling_gives_every_group_its_own_id(tmp_path):
    # group_size 3, 4 tasks, 2 tries. Try 1 keeps groups 1 and 3 (0 and 2 are all-right /
    # all-wrong); try 2 draws 2 new tasks. Their ids used to be offset by the 2 kept groups
    # (-> 2, 3) and group 3 merged with a kept group, sharing one baseline.
    cfg = tiny_cfg(tmp_path, "run.steps=1", "rollout.tasks_per_step=4", "rollout.group_size=3",
                   "algorithm.dynamic_sampling=true", "algorithm.max_sampling_tries=2")
    trainer = GRPOTrainer(cfg)
    try:
        schedule = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 1] + [1, 0, 0, 0, 1, 1]
        trainer.collector.engine = ScriptedPolicy(trainer.tokenizer, trainer.tasks, schedule)
        trajs, stats = trainer._sample_batch()
    finally:
        trainer.close()
    assert stats["sampling/tries"] == 2 and stats["sampling/groups"] == 4 and len(trajs) == 12
    members: dict[int, set[str]] = {}
    for t in trajs:
        members.setdefault(t.group_id, set()).add(t.task_id)
    assert len(members) == 4 and all(len(tasks) == 1 for tasks in members.values()), members
    assert sorted(sum(t.group_id == g for t in trajs) for g in members) == [3, 3, 3, 3]


# -- 2. the reference model ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reference_runs_in_micro_batches_on_the_policy_device_in_the_model_dtype(tmp_path, dtype):
    cfg = tiny_cfg(tmp_path, "run.steps=1", "algorithm.kl_coef=0.01", "optim.micro_batch_size=1",
                   f"model.dtype={dtype}")
    trainer = GRPOTrainer(cfg)
    seen = []
    try:
        ref = trainer.ref.model
        trainer.ref.body.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                      with_kwargs=True)
        policy = next(trainer.model.parameters())
        assert all(p.device == policy.device and p.dtype == getattr(torch, dtype) for p in ref.parameters())
        assert not any(p.requires_grad for p in ref.parameters())
        record = trainer.train_step()
    finally:
        trainer.close()
    assert len(seen) == 4 and max(seen) == 1  # 2 tasks x 2 samples, one sequence per forward
    assert math.isfinite(record["train/kl"])


# -- 3. entropy bonus ------------------------------------------------------------------------


def test_entropy_coef_moves_the_entropy_it_names(tmp_path):
    # Zero advantages (all rewards equal): the entropy term is the only gradient. A positive
    # coefficient must raise the policy's entropy on a fixed batch, a negative one lower it.
    after = {}
    for coef in (-1.0, 0.0, 1.0):
        cfg = tiny_cfg(tmp_path / str(coef), f"algorithm.entropy_coef={coef}", "optim.lr=3e-3")
        trainer = GRPOTrainer(cfg)
        try:
            trajs, batch = fixed_batch(trainer, rewards=[0.0, 0.0, 0.0, 0.0])
            before = mean_entropy(trainer.model, batch)
            record = trainer.updater(batch, [len(trajs)], 0)
            after[coef] = mean_entropy(trainer.model, batch)
        finally:
            trainer.close()
        if coef == 0.0:
            assert record["train/grad_norm"] == 0.0 and after[coef] == pytest.approx(before, abs=1e-6)
        else:
            assert record["train/grad_norm"] > 0.0
    assert after[-1.0] < after[0.0] < after[1.0]


# -- 4. REINFORCE++ --------------------------------------------------------------------------


def test_reinforce_pp_with_groups_of_one_uses_the_batch_as_baseline():
    from agentrl.advantages import compute_advantages

    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.arange(4)
    # verl: group of one -> mean 0; tile over tokens; masked_whiten over all trained tokens
    counts = torch.tensor([2.0, 1.0, 1.0, 4.0])
    tokens = torch.repeat_interleave(r, counts.long())
    mu, var = tokens.mean(), tokens.var()  # unbiased, as verl's masked_var
    expected = (r - mu) * torch.rsqrt(var + 1e-8)
    out = compute_advantages("reinforce_pp", r, g, token_counts=counts)
    assert torch.allclose(out, expected, atol=1e-6) and out.abs().sum() > 0
    plain = compute_advantages("reinforce_pp", r, g)  # every episode weighs one
    assert torch.allclose(plain, (r - r.mean()) / r.std(), atol=1e-6)


# -- 5. bf16 master weights ------------------------------------------------------------------


def test_bf16_training_keeps_fp32_master_weights_so_small_updates_land(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.steps=2", "model.dtype=bfloat16", "optim.lr=1e-6", "algorithm.entropy_coef=-1.0")
    trainer = GRPOTrainer(cfg)
    try:
        start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        trainer.train()
        changed = sum(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())
    finally:
        trainer.close()
    assert changed >= len(start) // 2


# -- 6. global normalisers -------------------------------------------------------------------


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_gradient_does_not_depend_on_the_micro_batch_size(tmp_path, loss_agg):
    # Two of six sequences truncated and masked (overlong: mask): the per-micro-batch count of
    # valid sequences used to differ from the minibatch's (seq_mean_token_mean: up to 36%).
    from agentrl.policy_update import PolicyUpdate

    cfg = tiny_cfg(tmp_path, f"algorithm.loss_agg={loss_agg}", "optim.grad_clip=1e9", "optim.sort_by_length=false")
    trainer = GRPOTrainer(cfg)
    try:
        trajs = trainer.collector.collect(trainer.tasks[:3], 2, seed=7)
        trajs[0].truncated = trajs[3].truncated = True
        rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
        batch = collate(trajs, trainer.tokenizer.pad_token_id)
        trainer._prepare(batch, trajs, rewards, None)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        norms = []
        for micro in (1, 2, 6):  # the pre-clip gradient norm of the same minibatch from the same weights
            trainer.model.load_state_dict(start)
            update = PolicyUpdate(trainer.engine, cfg.model_copy(update={"optim": cfg.optim.model_copy(
                update={"micro_batch_size": micro})}))
            norms.append(update(dict(batch), [len(trajs)], 0)["train/grad_norm"])
    finally:
        trainer.close()
    assert norms[0] > 0 and norms == pytest.approx([norms[0]] * 3, rel=1e-5)


def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradient(tmp_path):
    norms, saved = [], []
    for on in (False, True):
        cfg = tiny_cfg(tmp_path / str(on), f"optim.gradient_checkpointing={str(on).lower()}", "optim.micro_batch_size=4")
        trainer = GRPOTrainer(cfg)
        try:
            trajs, batch = fixed_batch(trainer)
            nbytes = [0]

            def pack(t):  # every tensor autograd keeps for backward
                nbytes[0] += t.numel() * t.element_size()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                norms.append(trainer.updater(batch, [len(trajs)], 0)["train/grad_norm"])
            saved.append(nbytes[0])
        finally:
            trainer.close()
    assert saved[1] < saved[0] / 3  # decoder-layer activations are recomputed, not kept
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)


# -- 7. LR horizon ---------------------------------------------------------------------------


def test_cosine_schedule_spans_every_optimiser_step(tmp_path):
    history, trainer = run(tiny_cfg(tmp_path, "run.steps=2", "algorithm.minibatches=2", "optim.schedule=cosine",
                                    "optim.lr=1e-3"))
    # 4 optimiser steps: after step 1 (2 of 4) the cosine is at its midpoint, after step 2 at 0
    assert history[0]["train/lr"] == pytest.approx(0.5e-3, rel=1e-6)
    assert history[1]["train/lr"] == pytest.approx(0.0, abs=1e-12)


# -- 8. vLLM dtype ---------------------------------------------------------------------------


def test_vllm_engine_dtype_follows_the_model_dtype(tmp_path):
    cfg = tiny_cfg(tmp_path, "model.dtype=bfloat16", "rollout.engine=vllm", "rollout.vllm={enforce_eager: true}")
    assert vllm_engine_kwargs(cfg) == {"dtype": "bfloat16", "enforce_eager": True}
    cfg = tiny_cfg(tmp_path, "model.dtype=bfloat16", "rollout.engine=vllm", "rollout.vllm={dtype: float32}")
    assert vllm_engine_kwargs(cfg)["dtype"] == "float32"  # an explicit rollout.vllm.dtype wins


# -- 9. KL in the reward ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_in_reward_uses_kl_kind(tmp_path, kind):
    from agentrl.losses import kl_penalty

    cfg = tiny_cfg(tmp_path, "algorithm.kl_coef=0.1", "algorithm.kl_in_reward=true", f"algorithm.kl_kind={kind}",
                   f"model.reference_path={cached_tiny_model(seed=1)}")
    trainer = GRPOTrainer(cfg)
    try:
        trajs = trainer.collector.collect(trainer.tasks[:2], 2, seed=3)
        batch = collate(trajs, trainer.tokenizer.pad_token_id)
        ref = trainer._reference_logprobs(batch, [len(trajs)])
        rewards = trainer._shaped_rewards(trajs, ref)
    finally:
        trainer.close()
    d = batch["old_logprobs"] - ref["logprobs"]  # log pi / pi_ref on the sampled tokens
    per_token = {"k1": d, "k2": 0.5 * d ** 2, "k3": torch.exp(-d) + d - 1}[kind]
    expected = (per_token * batch["loss_mask"]).sum(-1)
    assert torch.allclose(ref["seq_kl"], expected, atol=1e-4)
    assert torch.allclose(kl_penalty(batch["old_logprobs"], ref["logprobs"], kind).mul(batch["loss_mask"]).sum(-1),
                          expected, atol=1e-4)
    raw = torch.tensor([t.reward for t in trajs])
    assert torch.allclose(rewards, raw - 0.1 * expected, atol=1e-5)


# -- 10. metrics -----------------------------------------------------------------------------


def test_ratio_extremes_are_the_extremes_of_the_whole_batch(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.micro_batch_size=1", "optim.sort_by_length=false", "optim.lr=1e-9")
    trainer = GRPOTrainer(cfg)
    try:
        trajs, batch = fixed_batch(trainer)
        exact = trainer.updater.logprobs(trainer.engine, batch, [len(trajs)])
        offsets = torch.tensor([-0.5, 0.0, 0.3, 0.1])[:, None]
        batch["old_logprobs"] = (exact + offsets) * batch["loss_mask"]  # ratio = exp(-offset) per sequence
        record = trainer.updater(batch, [len(trajs)], 0)
    finally:
        trainer.close()
    assert record["train/ratio_max"] == pytest.approx(math.exp(0.5), rel=1e-4)
    assert record["train/ratio_min"] == pytest.approx(math.exp(-0.3), rel=1e-4)


def test_resume_after_a_crash_logs_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a run that checkpointed at step 4 and was killed after logging step 5
    import shutil

    run(tiny_cfg(tmp_path, "run.steps=5", "run.save_every=4", "run.tensorboard=true"))
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000005")  # killed before its final save
    history, _ = run(tiny_cfg(tmp_path, "run.steps=6", "run.save_every=4", "run.tensorboard=true"), resume=True)
    assert len(history) == 2
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [1, 2, 3, 4, 5, 6]


def test_training_metrics_of_verl_and_trl_are_reported(tmp_path):
    history, _ = run(tiny_cfg(tmp_path, "run.steps=1"))
    record = history[0]
    for key in ("adv/mean", "adv/std", "adv/min", "adv/max", "batch/flat_group_frac", "response_length/mean",
                "response_length/max", "response_length/clip_frac", "train/grad_norm", "train/lr",
                "mismatch/abs_logp_diff_mean", "mismatch/abs_logp_diff_max", "mismatch/kl"):
        assert key in record and math.isfinite(record[key]), key
    assert record["batch/flat_group_frac"] == 1.0  # the untrained model never answers right
    assert record["response_length/max"] >= record["response_length/mean"] > 0


# -- rollout / trainer mismatch --------------------------------------------------------------


def test_truncated_importance_weights_on_a_hand_made_batch():
    trainer_lp = torch.tensor([[0.0, -1.0, -1.0, -2.0], [0.0, -1.0, -0.5, 0.0]])
    engine_lp = torch.tensor([[0.0, -2.0, -1.0, -1.0], [0.0, -1.2, -0.5, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    # token ratios pi_trainer / pi_engine: row 0 e^1, 1, e^-1; row 1 e^0.2, 1
    w, capped = importance_weights(trainer_lp, engine_lp, mask, "token", cap=2.0)
    assert torch.allclose(w, torch.tensor([[0.0, 2.0, 1.0, math.exp(-1)], [0.0, math.exp(0.2), 1.0, 0.0]]))
    assert capped.tolist() == [[False, True, False, False], [False, False, False, False]]
    w, capped = importance_weights(trainer_lp, engine_lp, mask, "sequence", cap=2.0)
    # sequence ratios: row 0 e^(1+0-1) = 1, row 1 e^0.2
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, math.exp(0.2)] * 1 + [math.exp(0.2), 0.0]]))
    assert not capped.any()
    keep = mismatch_keep(trainer_lp, engine_lp, mask, "token", threshold=2.0)
    assert keep.tolist() == [[False, False, True, False], [False, True, True, False]]
    keep = mismatch_keep(trainer_lp, engine_lp, mask, "sequence", threshold=1.1)
    assert keep.tolist() == [[False, True, True, True], [False, False, False, False]]


def _update_with_a_known_mismatch(tmp_path, fused: bool, *overrides):
    """One update on a real batch whose "engine" log-probs under-estimate sequence 0's tokens by
    1 nat (TIS ratio e > cap 2); ``fused``: the recompute pass reused from the update's forward."""
    cfg = tiny_cfg(tmp_path, "algorithm.old_logprobs=recompute", "algorithm.tis=token", "algorithm.tis_cap=2.0",
                   *overrides)
    torch.manual_seed(0)
    trainer = GRPOTrainer(cfg)
    try:
        trainer.updater.reuse_update_forward = fused
        assert trainer.updater.fuses_recompute() == fused
        trajs, batch = fixed_batch(trainer)
        true = trainer.updater.logprobs(trainer.engine, batch, [len(trajs)])
        batch["old_logprobs"] = true - torch.tensor([1.0, 0.0, 0.0, 0.0])[:, None] * batch["loss_mask"]
        record = trainer.updater(batch, [len(trajs)], 0)
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.close()
    return batch, record, weights


def test_recompute_mode_weights_a_known_mismatch(tmp_path):
    batch, record, _ = _update_with_a_known_mismatch(tmp_path, False, "optim.lr=1e-9")
    mask = batch["loss_mask"].bool()
    expected = torch.where(mask, torch.tensor([2.0, 1.0, 1.0, 1.0])[:, None].expand_as(mask), 0.0)
    assert torch.allclose(batch["is_weights"], expected, atol=1e-4)
    share = float(mask[0].sum() / mask.sum())
    assert record["mismatch/tis_capped_frac"] == pytest.approx(share)
    assert record["mismatch/abs_logp_diff_max"] == pytest.approx(1.0, abs=1e-4)
    assert record["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # old = the trainer's own


def test_one_update_per_batch_reuses_its_forward_for_the_recompute_and_updates_the_same(tmp_path):
    # epochs 1 x minibatches 1 (the default): the proximal log-probs are the update forward's own
    # (verl's on_policy case), one no-grad pass fewer; the step is the separate pass's, to rounding
    _, separate, w_separate = _update_with_a_known_mismatch(tmp_path / "separate", False, "optim.lr=1e-2")
    _, fused, w_fused = _update_with_a_known_mismatch(tmp_path / "fused", True, "optim.lr=1e-2")
    for key in ("mismatch/tis_capped_frac", "mismatch/abs_logp_diff_max", "mismatch/abs_logp_diff_mean",
                "train/loss", "train/grad_norm", "train/ratio_mean"):
        assert fused[key] == pytest.approx(separate[key], rel=1e-5, abs=1e-6), key
    assert fused["mismatch/tis_capped_frac"] > 0 and fused["train/ratio_mean"] == 1.0  # exactly: the same forward
    assert fused["train/grad_norm"] > 0
    for k in w_separate:
        assert torch.allclose(w_fused[k], w_separate[k], atol=1e-6), k
    # more than one optimiser step per batch keeps the separate pass (the proximal policy is the
    # weights before the first of them)
    cfg = tiny_cfg(tmp_path / "cfg", "algorithm.old_logprobs=recompute", "algorithm.minibatches=2")
    from agentrl.policy_update import PolicyUpdate

    assert not PolicyUpdate.fuses_recompute(type("U", (), {"cfg": cfg, "reuse_update_forward": True})())


@pytest.mark.parametrize("mode", ["engine", "recompute"])
def test_first_step_ratio_is_one_with_the_hf_engine(tmp_path, mode):
    history, _ = run(tiny_cfg(tmp_path, "run.steps=1", f"algorithm.old_logprobs={mode}", "rollout.temperature=1.0",
                              "rollout.top_p=1.0"))
    r = history[0]
    assert r["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert r["train/ratio_max"] == pytest.approx(1.0, abs=1e-3) and r["train/ratio_min"] == pytest.approx(1.0, abs=1e-3)
    assert r["mismatch/abs_logp_diff_max"] < 1e-3 and r["mismatch/kl"] < 1e-6


def test_tis_without_recompute_is_refused(tmp_path):
    from agentrl.config import ConfigError

    with pytest.raises(ConfigError, match="old_logprobs: recompute"):
        tiny_cfg(tmp_path, "algorithm.tis=token")
