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
    cfg = load_config(path, schema=SFTConfig if "sft" in path.name else TrainConfig)
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
