"""The learned critic (``algorithm.advantage: gae``) and the VAPO switches, for real: the tiny model,
the PythonTool env with the real sandbox, the HF engine. Each switch changes what it says (critic
lr, value pretraining / warm-up, the positive NLL term), checkpoints hold the critic and resume is
identical, and the two recipes run."""
from __future__ import annotations

import math

import pytest
import torch

from agentrl.batch import collate
from agentrl.config import ConfigError, load_config
from agentrl.critic import Critic, ValueModel
from agentrl.model import cached_tiny_model
from agentrl.policy_update import PolicyUpdate
from agentrl.trainer import GRPOTrainer
from agentrl.types import StopReason, Trajectory, TurnRecord
from test_trainer import run, tiny_cfg

GAE = ("algorithm.advantage=gae", "rollout.group_size=1", "rollout.tasks_per_step=4")
TINY = lambda tmp_path: [f"model.path={cached_tiny_model()}", "model.init_if_missing=null",  # noqa: E731
                         f"run.output_dir={tmp_path}", "run.progress=false", "run.tensorboard=false",
                         "rollout.tasks_per_step=2", "rollout.max_new_tokens_per_turn=12",
                         "rollout.max_total_tokens=200", "env.kwargs.max_turns=2"]


def _traj(ids, mask, reward):
    return Trajectory(input_ids=ids, loss_mask=mask, logprobs=[-1.0 if m else 0.0 for m in mask], prompt_len=2,
                      turns=[TurnRecord(action="a", observation="o")], reward=reward, reward_components={},
                      stop_reason=StopReason.ANSWER, truncated=False)


def hand_batch(rewards=(1.0, 0.0)):
    # prompt (2) | action (3) | observation (2) | action (2); and a shorter one
    a = _traj([5, 6, 7, 8, 9, 10, 11, 12, 13], [0, 0, 1, 1, 1, 0, 0, 1, 1], rewards[0])
    b = _traj([5, 6, 20, 21, 22, 23], [0, 0, 1, 0, 0, 1], rewards[1])
    return [a, b], collate([a, b], pad_id=0)


def params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


# -- the value model ---------------------------------------------------------------------------
def test_value_of_a_token_is_read_before_it_and_sees_only_the_past():
    model = ValueModel(str(cached_tiny_model()), seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        v = model(ids, torch.ones_like(ids))
        h = model.body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        changed = ids.clone()
        changed[0, 4:] = 30  # tokens 4.. differ: V at t <= 4 (the states before them) must not
        v2 = model(changed, torch.ones_like(ids))
    assert v[0, 0] == 0.0
    assert torch.allclose(v[0, 1:], model.head(h).squeeze(-1)[0, :-1], atol=1e-6)  # V[t] = head(h[t-1])
    assert torch.allclose(v[0, :5], v2[0, :5], atol=1e-6) and not torch.allclose(v[0, 5:], v2[0, 5:])
    # the head is initialised from the run's seed alone (the same every time, global RNG untouched)
    state = torch.get_rng_state()
    again = ValueModel(str(cached_tiny_model()), seed=0)
    assert torch.equal(again.head.weight, model.head.weight) and torch.equal(torch.get_rng_state(), state)


def _critic(tmp_path, *overrides):
    cfg = load_config("configs/retool_tiny_cpu.yaml", [*TINY(tmp_path), *GAE, *overrides])
    return Critic(cfg), cfg


def _prepared(critic, rewards=(1.0, 0.0), step=0):
    trajs, batch = hand_batch(rewards)
    batch["advantages"] = critic.advantages(trajs, torch.tensor(rewards), batch, step)
    return trajs, batch


@pytest.mark.parametrize("lr", [0.0, 1e-3])
def test_critic_weights_move_with_its_lr_and_only_then(tmp_path, lr):
    critic, _ = _critic(tmp_path, f"critic.lr={lr}")
    before = params(critic.model)
    _, batch = _prepared(critic)
    stats = critic.update(batch)
    moved = (params(critic.model) - before).abs().max()
    assert stats["critic/grad_norm"] > 0 and math.isfinite(stats["critic/vf_loss"])
    assert (moved > 0) == (lr > 0)
    if lr:  # and towards the targets: the value loss on the same batch goes down
        for _ in range(5):
            critic.update(batch)
        assert critic.update(batch)["critic/vf_loss"] < stats["critic/vf_loss"]


def test_critic_targets_use_the_critic_lambda_and_pretraining_uses_monte_carlo(tmp_path):
    critic, cfg = _critic(tmp_path, "algorithm.lambda_critic=0.5", "algorithm.lambda_policy=0.0", "algorithm.gamma=1.0",
                          "critic.pretrain_steps=1", "run.steps=3")
    _, batch = _prepared(critic, step=0)  # pretraining: lambda 1 whatever lambda_critic says
    mc = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.allclose(batch["returns"], mc)  # gamma 1, lambda 1: the reward-to-go (r = 1, then 0)
    assert critic._step_metrics["critic/lambda_critic"] == 1.0 and critic._step_metrics["critic/pretraining"] == 1.0
    _, batch = _prepared(critic, step=1)
    assert critic._step_metrics["critic/lambda_critic"] == 0.5 and not torch.allclose(batch["returns"], mc)
    adv = batch["advantages"]
    assert adv[batch["loss_mask"] == 0].abs().sum() == 0  # observation and padding tokens get nothing


def test_config_says_what_a_critic_needs():
    base = "configs/retool_tiny_cpu.yaml"
    cfg = load_config(base, ["algorithm.advantage=gae", "rollout.group_size=1"])  # a critic needs no group
    assert cfg.critic.lr > 0 and cfg.algorithm.lambda_critic == 1.0
    for overrides, message in [
        (["algorithm.gamma=0.9"], "only apply to algorithm.advantage: gae"),
        (["critic.lr=1e-3"], "critic only apply"),
        (["algorithm.advantage=gae", "engine=deepspeed", "algorithm.dynamic_sampling=true"], "every rank to hold groups"),
        (["algorithm.advantage=gae", "algorithm.turn_level=true"], "each turn's reward"),
        (["algorithm.advantage=gae", "algorithm.lambda_policy=1.5"], "lambda_policy must be in"),
        (["algorithm.advantage=gae", "algorithm.lambda_alpha=0.1"], "only applies with lambda_policy: length_adaptive"),
        (["algorithm.advantage=gae", "critic.pretrain_steps=3", "critic.warmup_steps=1", "run.steps=4"], "no policy step"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(base, overrides)
    # a dumped config (every key at its default) of a GRPO run loads back
    dumped = load_config(base).model_dump(mode="json")
    from agentrl.config import parse_config
    assert parse_config(dumped).algorithm.advantage == "grpo"


# -- the positive-sample NLL term ---------------------------------------------------------------
@pytest.mark.parametrize("coef,rewards,moves", [(0.0, (1.0, 1.0), False), (0.1, (0.0, 0.0), False),
                                                (0.1, (1.0, 0.0), True)])
def test_positive_nll_trains_on_positive_episodes_only(tmp_path, coef, rewards, moves):
    # zero advantages: the policy-gradient term has no gradient, the NLL term is all there is
    cfg = tiny_cfg(tmp_path, "run.steps=1", f"algorithm.positive_nll_coef={coef}")
    trainer = GRPOTrainer(cfg)
    try:
        trajs, batch = hand_batch(rewards)
        batch["advantages"].zero_()
        if coef:
            batch["positive"] = torch.tensor([float(r > 0) for r in rewards])[:, None].expand_as(batch["loss_mask"]).clone()
        before = params(trainer.model)
        update = PolicyUpdate(trainer.engine, cfg)(batch, [2], step=0)
    finally:
        trainer.close()
    assert ((params(trainer.model) - before).abs().max() > 0) == moves
    if coef:
        assert (update["train/nll_loss"] > 0) == moves  # -log pi of the positive episode's action tokens


def test_trainer_marks_positive_episodes_by_reward(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.steps=1", "algorithm.positive_nll_coef=0.1")
    trainer = GRPOTrainer(cfg)
    try:
        trajs, batch = hand_batch((1.0, 0.0))
        trainer._prepare(batch, trajs, torch.tensor([1.0, 0.0]), None)
    finally:
        trainer.close()
    assert batch["positive"][:, 0].tolist() == [1.0, 0.0] and batch["positive"].shape == batch["loss_mask"].shape


# -- real runs ----------------------------------------------------------------------------------
def test_pretraining_and_warmup_keep_the_policy_fixed_then_it_moves(tmp_path):
    cfg = tiny_cfg(tmp_path, *GAE, "run.steps=3", "critic.lr=1e-3", "critic.pretrain_steps=1",
                   "critic.warmup_steps=1", "algorithm.lambda_critic=0.9")
    trainer = GRPOTrainer(cfg)
    try:
        policy, critic = params(trainer.model), params(trainer.critic.model)
        records = []
        for _ in range(2):
            records.append(trainer.train_step())
            assert torch.equal(params(trainer.model), policy)  # the policy has not moved
            assert not torch.equal(params(trainer.critic.model), critic)  # the critic has
            critic = params(trainer.critic.model)
        records.append(trainer.train_step())
        assert not torch.equal(params(trainer.model), policy)
    finally:
        trainer.close()
    assert [r["critic/lambda_critic"] for r in records] == [1.0, 0.9, 0.9]  # value pretraining: Monte-Carlo
    assert [r.get("train/policy_frozen", 0.0) for r in records] == [1.0, 1.0, 0.0]
    assert "train/loss" not in records[0] and math.isfinite(records[2]["train/loss"])


def test_resume_with_a_critic_is_identical(tmp_path):
    common = (*GAE, "critic.lr=1e-3", "critic.pretrain_steps=1", "algorithm.lambda_policy=length_adaptive",
              "algorithm.positive_nll_coef=0.1", "run.save_every=2")
    full, a = run(tiny_cfg(tmp_path / "a", *common, "run.steps=4"))
    first, _ = run(tiny_cfg(tmp_path / "b", *common, "run.steps=2"))
    assert (tmp_path / "b" / "checkpoints" / "step_00000002" / "critic" / "value_model.safetensors").is_file()
    rest, b = run(tiny_cfg(tmp_path / "b", *common, "run.steps=4"), resume=True)
    assert len(rest) == 2
    for key in ("reward/mean", "critic/vf_loss", "critic/values_mean", "critic/grad_norm", "adv/max"):
        assert [r[key] for r in first + rest] == [r[key] for r in full], key
    assert [r.get("train/loss") for r in first + rest] == [r.get("train/loss") for r in full]
    assert torch.equal(params(a.critic.model), params(b.critic.model))
    assert torch.equal(params(a.model), params(b.model))
    sa, sb = a.critic.optimizer.state_dict()["state"], b.critic.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_resuming_a_checkpoint_without_a_critic_says_so(tmp_path):
    run(tiny_cfg(tmp_path, "run.steps=1", "run.save_every=1"))  # GRPO: no critic in the checkpoint
    with pytest.raises(FileNotFoundError, match="holds no critic"):
        GRPOTrainer(tiny_cfg(tmp_path, *GAE, "run.steps=2"), resume=True)


@pytest.mark.parametrize("recipe,steps", [("configs/ppo_gae_cpu.yaml", 2), ("configs/vapo_cpu.yaml", 3)])
def test_recipe_trains(tmp_path, recipe, steps):
    overrides = [*TINY(tmp_path), f"run.steps={steps}", "run.save_every=10"]
    if "vapo" in recipe:
        overrides += ["critic.pretrain_steps=1", "rollout.group_size=2"]
    cfg = load_config(recipe, overrides)
    history, trainer = run(cfg)
    assert len(history) == steps
    last = history[-1]
    for key in ("critic/vf_loss", "critic/explained_var", "critic/grad_norm", "train/loss", "train/grad_norm"):
        assert math.isfinite(last[key]), key
    if "vapo" in recipe:
        assert history[0]["train/policy_frozen"] == 1.0 and "train/nll_loss" in last
        assert 0.0 <= last["critic/lambda_policy_mean"] < 1.0 and last["critic/lambda_critic"] == 1.0
