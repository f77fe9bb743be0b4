"""The training-engine seam: forward, backward, optimiser step, state for checkpoints and pushes.

``TorchEngine`` is the default (one process, CPU or one GPU). The DeepSpeed engine implements
the same methods, so the trainer loop never changes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch


class TrainEngine(Protocol):
    model: torch.nn.Module
    # Data parallelism (one process: rank 0 of 1, reductions are the identity, barrier a no-op).
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def all_reduce_sum(self, value: float | Sequence[float]) -> float | list[float]:
        """Sum over ranks of a scalar (returns a float) or of a sequence (returns a list)."""

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""

    def barrier(self) -> None: ...

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Full ``[B, T, V]`` logits (SFT; the RL loss uses ``hidden`` + ``head`` instead)."""

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The model body's final hidden states ``[B, T, H]`` (see :mod:`agentrl.logprobs`);
        ``attention_mask`` 2-D (padding) or 4-D (packed, with ``position_ids``)."""

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on some hidden states: logits ``[..., V]``."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> float:
        """Clip gradients, apply the optimiser and the LR schedule; returns the grad norm."""

    def zero_grad(self) -> None: ...

    def scale_lr(self, factor: float) -> None: ...

    def policy_state_dict(self) -> dict[str, torch.Tensor]: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


def optimizer_steps(cfg) -> int:
    """Optimiser steps in a whole run: the LR schedule's horizon. The scheduler steps once per
    optimiser step, i.e. ``epochs x minibatches`` times per training step."""
    return cfg.run.steps * cfg.algorithm.epochs * cfg.algorithm.minibatches


def enable_gradient_checkpointing(model: torch.nn.Module, optim_cfg) -> None:
    """``optim.gradient_checkpointing``: HF's per-layer activation checkpointing (training mode
    only, so rollouts on the shared module are unaffected)."""
    if not getattr(optim_cfg, "gradient_checkpointing", False):
        return
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


class TorchEngine:
    """One process. ``autocast_bf16`` (``model.dtype: bfloat16``) runs forward passes under bf16
    autocast over float32 parameters: the parameters are the fp32 master weights AdamW updates.
    (AdamW on bf16 parameters loses every update smaller than bf16's resolution: at lr 1e-6 not
    one weight changes.)"""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, model: torch.nn.Module, optim_cfg, total_steps: int, autocast_bf16: bool = False):
        from agentrl.logprobs import CausalLMParts

        if any(p.dtype != torch.float32 for p in model.parameters() if p.requires_grad):
            raise ValueError("TorchEngine trains float32 parameters (its master weights); load the model in float32 "
                             "and set autocast_bf16 for bf16 compute")
        enable_gradient_checkpointing(model, optim_cfg)
        self.model = model
        self.parts = CausalLMParts(model, autocast_bf16)
        self.cfg = optim_cfg
        # only what trains (LoRA: the adapters): no optimiser state for frozen weights
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=optim_cfg.lr,
                                           betas=tuple(optim_cfg.betas), weight_decay=optim_cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(optim_cfg.warmup_steps, total_steps, optim_cfg.schedule))
        self.autocast_bf16 = autocast_bf16

    def forward(self, input_ids, attention_mask):
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def hidden(self, input_ids, attention_mask, position_ids=None):
        return self.parts.hidden(input_ids, attention_mask, position_ids)

    def head(self, hidden):
        return self.parts.head(hidden)

    def frozen_copy(self, model: torch.nn.Module):
        """A frozen model (the KL reference) on the policy's device in its compute dtype (bf16
        weights under autocast: no master copy is needed for a model that is never updated);
        returns its ModelParts."""
        from agentrl.logprobs import CausalLMParts

        dtype = torch.bfloat16 if self.parts.autocast_bf16 else torch.float32
        model = model.to(self.device, dtype).eval().requires_grad_(False)
        return CausalLMParts(model, self.parts.autocast_bf16)

    def backward(self, loss):
        loss.backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if torch.isfinite(norm):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def scale_lr(self, factor: float) -> None:
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr * factor

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # -- data parallel helpers (one process) ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def all_reduce_sum(self, value):
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            return float(value)
        if isinstance(value, (torch.Tensor, list, tuple)):
            return [float(v) for v in value]
        return float(value)

    def all_gather_object(self, obj):
        return [obj]

    def barrier(self) -> None:
        pass

    def policy_state_dict(self):
        """The weights a rollout engine loads: the module's own (LoRA: merged into the base's names)."""
        from agentrl.lora import has_adapters, merged_state_dict

        weights = self.model.state_dict()
        return merged_state_dict(weights, self.model) if has_adapters(self.model) else weights

    def save(self, directory: Path) -> None:
        from agentrl.lora import has_adapters, save_adapters

        if has_adapters(self.model):  # LoRA: the adapter alone (peft's format), the base is model.path
            save_adapters(self.model, directory)
        else:
            self.model.save_pretrained(directory, safe_serialization=True)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        from transformers import AutoModelForCausalLM

        from agentrl.lora import has_adapters, load_adapters

        if has_adapters(self.model):
            load_adapters(self.model, directory)
        else:
            weights = AutoModelForCausalLM.from_pretrained(directory, dtype=next(self.model.parameters()).dtype)
            self.model.load_state_dict(weights.state_dict())
        state = torch.load(directory / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
