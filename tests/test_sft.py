"""``agentrl sft`` end to end on the tiny model: the warm start the CPU learning run begins with."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.config import load_config
from agentrl.model import cached_tiny_model
from agentrl.sft import SFTConfig, sft


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sft_lowers_the_loss_and_saves_a_loadable_model(tmp_path, dtype):
    cfg = load_config("configs/retool_sft_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"model.dtype={dtype}",
        f"run.output_dir={tmp_path}", "run.steps=12", "run.progress=false", "run.tensorboard=false",
        f"save_to={tmp_path / 'model'}", "batch_size=8", "optim.micro_batch_size=4"], schema=SFTConfig)
    out = sft(cfg)
    losses = [json.loads(x)["sft/loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])  # bf16 too: the fp32 master weights take the updates
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.float32
