"""What a training run is built from: the policy and its tokenizer, the train engine (``torch`` or
DeepSpeed) and the rollout engine (``hf`` sharing the policy module, a separate full copy under
ZeRO-3, or vLLM). ``agentrl train``, ``agentrl sft`` and ``agentrl dpo`` share them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agentrl.config import TrainConfig


def load_policy(cfg: TrainConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cfg.model.path)
    if not path.exists() and cfg.model.init_if_missing:
        from agentrl.model import init_tiny_model

        init_tiny_model(path, size=cfg.model.init_if_missing, seed=cfg.run.seed)
    if not path.exists():
        raise FileNotFoundError(f"model.path {path} does not exist (set model.init_if_missing: tiny to build one)")
    # engine: torch keeps float32 parameters (master weights) and computes in bf16 under autocast
    dtype = torch.float32 if getattr(cfg, "engine", "torch") == "torch" else getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if cfg.model.lora is not None:  # adapters injected in place: the same module, only they train
        from agentrl.lora import add_adapters

        add_adapters(model, cfg.model.lora)
    return model, AutoTokenizer.from_pretrained(path)


def make_train_engine(cfg: TrainConfig, model):
    if cfg.engine == "deepspeed":
        from agentrl.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(model, cfg)
    from agentrl.train_engine import TorchEngine, optimizer_steps

    return TorchEngine(model, cfg.optim, optimizer_steps(cfg), autocast_bf16=cfg.model.dtype == "bfloat16")


def vllm_engine_kwargs(cfg: TrainConfig) -> dict:
    """``VLLMEngine`` options: the run's ``rollout.vllm`` over a dtype that follows ``model.dtype``
    (vLLM samples in the training dtype unless ``rollout.vllm.dtype`` says otherwise)."""
    return {"dtype": cfg.model.dtype, **(cfg.rollout.vllm or {})}


def make_rollout_engine(cfg: TrainConfig, model, tokenizer, separate_copy: bool = False):
    if cfg.rollout.engine == "vllm":
        from agentrl.engines.vllm import VLLMEngine

        return VLLMEngine(cfg.model.path, **vllm_engine_kwargs(cfg))
    from agentrl.engines.hf import HFEngine

    if separate_copy:  # ZeRO-3: a full, unpartitioned copy, refreshed by update_weights after each step
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=getattr(torch, cfg.model.dtype)).eval()
        model.requires_grad_(False)
    # Otherwise on CPU the rollout engine shares the policy module: no weight copy, no push.
    return HFEngine(model, tokenizer=tokenizer, num_threads=cfg.rollout.num_threads, share_prefix=cfg.rollout.share_prefix)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
