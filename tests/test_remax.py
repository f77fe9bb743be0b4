"""ReMax: the greedy rollout's reward as the baseline (advantage, masking, greediness, config, a real run)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from agentrl.batch import collate
from agentrl.collector import Collector, CollectorConfig
from agentrl.config import ConfigError, load_config
from agentrl.engines import SamplingParams
from agentrl.engines.hf import HFEngine
from agentrl.model import cached_tiny_model
from agentrl.trainer import GRPOTrainer
from agentrl.types import StopReason, Trajectory, TurnRecord


def tiny_cfg(tmp_path, *overrides):
    return load_config("configs/retool_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}",
        "run.progress=false", "run.tensorboard=false", "rollout.tasks_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens_per_turn=12", "rollout.max_total_tokens=200", "env.kwargs.max_turns=2",
        "algorithm.advantage=remax", *overrides])


# -- the estimator ------------------------------------------------------------------------------
def test_remax_is_reward_minus_greedy_reward():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    greedy = {0: 1.0, 1: 0.0, 2: 0.0}  # one greedy reward per prompt, gathered to every episode of it
    baselines = torch.tensor([greedy[g] for g in groups.tolist()])
    adv = compute_advantages("remax", rewards, groups, baselines=baselines)
    assert "remax" in ADVANTAGE_ESTIMATORS
    assert adv.tolist() == [r - b for r, b in zip(rewards.tolist(), baselines.tolist())] == [0.0, -1.0, 1.0, 0.5, 0.0]
    # no std normalisation: scaling the rewards scales the advantages
    assert torch.equal(compute_advantages("remax", 3 * rewards, groups, baselines=3 * baselines), 3 * adv)
    with pytest.raises(ValueError, match="needs baselines"):
        compute_advantages("remax", rewards, groups)
    with pytest.raises(ValueError, match="must be \\[B\\]"):
        compute_advantages("remax", rewards, groups, baselines=torch.zeros(2))


def _traj(ids, mask, reward, group, baseline):
    turns = [TurnRecord(action="a", observation="o")]
    return Trajectory(input_ids=ids, loss_mask=mask, logprobs=[0.0] * len(ids), prompt_len=2, turns=turns,
                      reward=reward, reward_components={}, stop_reason=StopReason.ANSWER, truncated=False,
                      group_id=group, info={"remax_baseline": baseline})


def test_advantage_is_broadcast_over_sampled_tokens_only():
    # prompt (2) | turn (3 sampled) | tool output (2, mask 0) | turn (2 sampled)
    a = _traj([1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 1, 1, 0, 0, 1, 1], reward=1.0, group=0, baseline=0.25)
    b = _traj([1, 2, 3, 4, 5, 6], [0, 0, 1, 0, 0, 1], reward=0.0, group=0, baseline=0.25)
    batch = collate([a, b], pad_id=0)
    cfg = load_config("configs/retool_tiny_cpu.yaml", ["algorithm.advantage=remax", "rollout.group_size=1"])
    fake_trainer = SimpleNamespace(cfg=cfg)  # _advantages only reads the config
    out = GRPOTrainer._advantages(fake_trainer, [a, b], torch.tensor([a.reward, b.reward]), batch)
    mask = batch["loss_mask"]
    expected = torch.tensor([[0.75], [-0.25]]) * mask  # r - r_greedy on every sampled token, 0 elsewhere
    assert torch.equal(out, expected)
    assert out[0, 5:7].abs().sum() == 0 and out[1, 3:5].abs().sum() == 0  # tool output: no advantage
    assert out[1, 6:].abs().sum() == 0  # padding: no advantage


# -- greedy rollouts are greedy -----------------------------------------------------------------
def test_temperature_zero_is_argmax_and_ignores_the_seed():
    path = cached_tiny_model()
    engine = HFEngine(path)
    tok = engine.tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 12 * 34?"}],
                                                add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    a, b = (engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=16, seed=s))[0] for s in (1, 2))
    assert a.token_ids == b.token_ids
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ref = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=len(a.token_ids),
                         min_new_tokens=len(a.token_ids), pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    assert ref == a.token_ids  # the argmax path of transformers' own greedy search


def test_a_greedy_collector_gives_the_same_episode_twice():
    engine = HFEngine(cached_tiny_model())
    config = CollectorConfig(max_new_tokens_per_turn=12, max_total_tokens=160, max_observation_tokens=32, temperature=0.0)
    collector = Collector("agentrl/PythonTool-v0", engine, config, env_kwargs={"max_turns": 2})
    task = {"id": "t", "question": "What is 12 * 34?", "answer": "408"}
    try:
        first, second = collector.collect([task], 1, seed=0)[0], collector.collect([task], 1, seed=99)[0]
    finally:
        collector.close()
    assert first.input_ids == second.input_ids and first.reward == second.reward


# -- config -------------------------------------------------------------------------------------
def test_config_accepts_groups_of_one_and_refuses_what_remax_cannot_do():
    cfg = load_config("configs/retool_tiny_cpu.yaml", ["algorithm.advantage=remax", "rollout.group_size=1"])
    assert cfg.algorithm.advantage == "remax"
    with pytest.raises(ConfigError, match="Turn dynamic_sampling off with remax"):
        load_config("configs/retool_tiny_cpu.yaml", ["algorithm.advantage=remax", "algorithm.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match="turn_level is not implemented for advantage: remax"):
        load_config("configs/retool_tiny_cpu.yaml", ["algorithm.advantage=remax", "algorithm.turn_level=true"])
    load_config("configs/remax_learn_cpu.yaml")  # the recipe parses


# -- a real run ---------------------------------------------------------------------------------
def test_two_step_run_reports_the_greedy_cost_and_uses_its_reward(tmp_path):
    trainer = GRPOTrainer(tiny_cfg(tmp_path, "run.steps=2", "rollout.group_size=1"))
    calls = []
    generate = trainer.greedy_collector.engine.generate
    trainer.greedy_collector.engine = SimpleNamespace(
        tokenizer=trainer.tokenizer, generate=lambda prompts, sp: calls.append(sp) or generate(prompts, sp))
    try:
        tasks = [trainer.tasks[i] for i in trainer.order[:2]]  # what step 1 draws
        sampled, stats = trainer._sample_batch()
        trainer.data_pos = 0
        greedy = trainer.greedy_collector.collect(tasks, 1, seed=0)  # same weights: the same greedy episodes
        history = trainer.train()
    finally:
        trainer.close()
    assert calls and all(sp.temperature == 0.0 for sp in calls)  # every greedy engine call is at temperature 0
    assert [t.info["remax_baseline"] for t in sampled] == [g.reward for g in greedy]
    assert stats["remax/greedy_reward_mean"] == pytest.approx(sum(g.reward for g in greedy) / 2)
    assert stats["remax/greedy_tokens"] == sum(g.n_generated for g in greedy) > 0
    assert len(history) == 2
    for record in history:
        assert record["remax/greedy_time_s"] > 0 and record["remax/greedy_tokens"] > 0
        assert 0.0 <= record["remax/greedy_reward_mean"] <= 1.0
        assert record["sampling/groups"] == 2  # only the sampled episodes are trained on
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("remax/greedy_time_s" in x for x in lines)


@pytest.mark.vllm
def test_vllm_temperature_zero_is_greedy_like_hf():
    """The vLLM engine honours temperature 0 too (its own venv: scripts/setup_vllm_venv.sh):
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_remax.py"""
    pytest.importorskip("vllm")
    import os

    from agentrl.engines import make_engine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    path = cached_tiny_model()
    hf = HFEngine(path)
    tok = hf.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False), add_special_tokens=False)
               for q in ("What is 12 * 34?", "What is 56 * 78?")]
    engine = make_engine("vllm", str(path), enforce_eager=True, seed=0, dtype="float32", per_request_seed=True)
    try:
        a, b = (engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16, seed=s)) for s in (1, 2))
    finally:
        engine.close()
    expected = hf.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=16))
    assert [c.token_ids for c in a] == [c.token_ids for c in b] == [c.token_ids for c in expected]
