"""The GRPO trainer end to end on the tiny model with the real PythonTool env and sandbox."""
import json
import math

import pytest

from agentrl.config import ConfigError, load_config, parse_config
from agentrl.model import cached_tiny_model
from agentrl.trainer import GRPOTrainer


def tiny_cfg(tmp_path, *overrides):
    return load_config("configs/retool_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}",
        "run.progress=false", "run.tensorboard=false", "rollout.tasks_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens_per_turn=12", "rollout.max_total_tokens=200", "env.kwargs.max_turns=2",
        *overrides])


def run(cfg, resume=False):
    trainer = GRPOTrainer(cfg, resume=resume)
    try:
        return trainer.train(), trainer
    finally:
        trainer.close()


def test_resume_gives_the_same_losses(tmp_path):
    full, _ = run(tiny_cfg(tmp_path / "a", "run.steps=4", "run.save_every=2"))
    first, _ = run(tiny_cfg(tmp_path / "b", "run.steps=2", "run.save_every=2"))
    rest, _ = run(tiny_cfg(tmp_path / "b", "run.steps=4", "run.save_every=2"), resume=True)
    assert len(rest) == 2  # bit-identical: the same samples, the same losses and gradients
    assert [r["train/loss"] for r in first + rest] == [r["train/loss"] for r in full]
    assert [r["train/grad_norm"] for r in first + rest] == [r["train/grad_norm"] for r in full]
    assert [r["reward/mean"] for r in first + rest] == [r["reward/mean"] for r in full]


def test_run_writes_metrics_tensorboard_and_atomic_checkpoints(tmp_path):
    history, trainer = run(tiny_cfg(tmp_path, "run.steps=2", "run.save_every=1", "run.tensorboard=true"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in ("reward/mean", "rollout/tool_calls_per_episode", "rollout/tool_error_rate", "train/entropy",
                "train/clip_frac", "train/grad_norm", "time/generation_s", "time/tools_s", "time/training_s"):
        assert key in lines[-1], key
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_00000001", "step_00000002"]  # no leftover .tmp- directories
    assert (tmp_path / "checkpoints" / "step_00000002" / "model.safetensors").is_file()


def test_collapse_guard_recovers_from_an_injected_nan(tmp_path):
    history, trainer = run(tiny_cfg(tmp_path, "run.steps=3", "run.save_every=1", "guard.inject_nan_at_step=1"))
    bad = [r for r in history if r.get("guard/restored")]
    assert len(bad) == 1 and "non-finite loss" in bad[0]["guard/reasons"]
    assert trainer.step == 3 and trainer.restores == 1
    assert trainer.engine.lr == pytest.approx(trainer.cfg.optim.lr * trainer.cfg.guard.lr_decay)
    assert all(math.isfinite(p.detach().sum()) for p in trainer.model.parameters())


def test_kl_turn_level_and_overlong_penalty_run(tmp_path):
    history, _ = run(tiny_cfg(tmp_path, "run.steps=1", "algorithm.kl_coef=0.01", "algorithm.turn_level=true",
                              "algorithm.overlong=penalty", "algorithm.loss_agg=seq_mean_token_sum_norm"))
    assert history[0]["train/kl"] >= 0 and math.isfinite(history[0]["train/loss"])


def test_dynamic_sampling_drops_uninformative_groups_and_reports_it(tmp_path):
    # The untrained model never answers correctly: every group is all-zero, so every try is dropped
    # and the step is skipped rather than trained on zero advantages.
    history, trainer = run(tiny_cfg(tmp_path, "run.steps=1", "algorithm.dynamic_sampling=true", "algorithm.max_sampling_tries=2"))
    assert history[0]["sampling/tries"] == 2 and history[0]["sampling/dropped_groups"] == 4
    assert history[0]["train/skipped"] == 1.0 and trainer.step == 1


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.bogus=1"], "unknown key 'algorithm.bogus'"),
    (["algorithm.loss_agg=mean"], "algorithm.loss_agg: must be one of"),
    (["rollout.group_size=1", "algorithm.dynamic_sampling=true"], "dynamic_sampling needs rollout.group_size >= 2"),
    (["algorithm.kl_in_reward=true"], "kl_coef is 0"),
    (["rollout.vllm={enforce_eager: true}"], "rollout.engine is hf"),
    (["optim.lr"], "must look like key=value"),
])
def test_bad_configs_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("configs/retool_tiny_cpu.yaml", overrides)


def test_missing_or_broken_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    assert parse_config({}).algorithm.advantage == "grpo"


def test_periodic_eval_is_logged_beside_the_training_metrics(tmp_path):
    history, _ = run(tiny_cfg(tmp_path, "run.steps=2",
                              "eval={every: 2, config: configs/eval/mul2_cpu.yaml, fast: true, limit: 2, k: 1}"))
    assert not any(k.startswith("eval/") for k in history[0])  # every 2 steps
    assert history[1]["eval/mul2_test/avg@1"] == history[1]["eval/mul2_test/avg@1"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval/mul2_test/avg@1" in lines[1] and (tmp_path / "eval" / "step2" / "metrics.json").is_file()
