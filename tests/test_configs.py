"""Every shipped recipe validates, and the search recipes run a GRPO step on the real index."""
from pathlib import Path

import pytest

from agentrl.config import TrainConfig, load_config
from agentrl.model import cached_tiny_model
from agentrl.sft import SFTConfig
from agentrl.trainer import GRPOTrainer

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_recipe_validates(path):
    from agentrl.dpo import DPOConfig

    schema = SFTConfig if "sft" in path.name else DPOConfig if path.name.startswith("dpo") else TrainConfig
    cfg = load_config(path, schema=schema)
    assert cfg.run.steps >= 1


@pytest.mark.parametrize("recipe", ["search_r1_tiny_cpu.yaml", "autorefine_tiny_cpu.yaml"])
def test_search_recipes_train_a_step(recipe, bm25_index, shared_data, tmp_path):
    cfg = load_config(Path("configs") / recipe, [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}",
        "run.steps=1", "run.progress=false", "run.tensorboard=false", f"env.kwargs.index_dir={bm25_index}",
        f"env.dataset={shared_data / 'qa' / 'train.jsonl.gz'}", "env.limit=8", "rollout.tasks_per_step=2",
        "rollout.group_size=2", "rollout.max_new_tokens_per_turn=16", "rollout.max_total_tokens=512"])
    trainer = GRPOTrainer(cfg)
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert len(history) == 1 and "train/loss" in history[0] and history[0]["rollout/turns"] >= 1


@pytest.mark.parametrize("recipe, train_eval", [
    ("search_kb_learn_cpu.yaml", "kb_search_train_cpu.yaml"),
    ("autorefine_kb_learn_cpu.yaml", "kb_autorefine_train_cpu.yaml"),
    ("tooluse_learn_cpu.yaml", "tooluse_train_cpu.yaml")])
def test_train_split_evals_sample_and_reward_as_their_recipe(recipe, train_eval):
    """The post-SFT level of a CPU learning run is measured by evaluating the SFT model on fixed
    training questions: that is the training reward only if the eval samples and rewards exactly
    as GRPO does (same env, env kwargs, dataset, temperature and token limits)."""
    from agentrl.eval.config import load_eval_config

    cfg = load_config(Path("configs") / recipe)
    suite = load_eval_config(f"configs/eval/{train_eval}", ["model=m"])
    (spec,) = suite.datasets
    assert spec.env == cfg.env.id and spec.path == cfg.env.dataset
    train_kwargs = {k: v for k, v in cfg.env.kwargs.items() if k != "index_dir"}  # the run's index
    assert spec.env_kwargs == train_kwargs
    for key in ("temperature", "top_p", "max_new_tokens_per_turn", "max_total_tokens", "max_observation_tokens"):
        assert getattr(suite, key) == getattr(cfg.rollout, key), key
