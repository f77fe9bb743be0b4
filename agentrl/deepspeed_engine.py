"""DeepSpeed ZeRO training engine: the ``TrainEngine`` seam (see :mod:`agentrl.train_engine`)
over ``deepspeed.initialize``, for ``engine: deepspeed`` in a run config.

* **Accumulation.** The trainer calls ``forward``/``backward`` once per micro-batch, with the loss
  already weighted by the micro-batch's share of the minibatch, and ``step`` once per minibatch;
  the number of micro-batches varies (dynamic sampling, ragged last chunk). DeepSpeed is run in
  *unmanaged* accumulation mode (``managed_gradient_accumulation: false``, DeepSpeed >= 0.19.5):
  ``backward`` only accumulates (ZeRO-2/3 reduce-scatter each micro-batch into the rank's
  gradient partition, ZeRO-1 keeps local ``.grad``), and every ``engine.step()`` is the
  accumulation boundary: finalise/all-reduce, clip, optimiser, LR schedule, zero grads.
  ``gradient_accumulation_steps`` is 1 and ``backward`` never rescales (``scale_wrt_gas=False``),
  so the trainer's weights are used as they are.
* **Data parallel.** DeepSpeed *averages* gradients over ranks. With each rank holding its own
  share of a minibatch, the update equals the single-process full-batch update when each rank's
  micro-batch weights sum to ``world_size x (its share of the global normaliser)``, e.g. for
  ``token_mean``: ``weight = mb_tokens / global_tokens * world_size`` (see
  :meth:`DeepSpeedEngine.all_reduce_sum`). With one process (``agentrl train`` without a
  launcher) nothing changes. Collectives: under ZeRO-2/3 every ``backward`` reduce-scatters, so
  all ranks must make the same number of ``backward`` calls per step (pad a short rank with a
  zero-weighted micro-batch) and all must call ``step``, ``zero_grad`` (when gradients are
  pending), ``policy_state_dict`` (ZeRO-3), ``save`` and ``load``.
  :class:`agentrl.trainer.GRPOTrainer` does all of this (see its module docstring); under
  ZeRO-3 it generates rollouts on a separate full copy of the model.
* **Optimiser / schedule.** ``torch.optim.AdamW`` with the run's lr/betas/weight decay (the same
  update as ``TorchEngine``) and the same ``lr_lambda`` schedule; with ``deepspeed.offload`` the
  optimiser states live on the CPU and the update is DeepSpeed's ``DeepSpeedCPUAdam`` (a C++ op
  JIT-compiled on first use). Gradient clipping is DeepSpeed's (``gradient_clipping``); ``step``
  returns the pre-clip global norm like ``TorchEngine``.
* **Checkpoints.** ``save`` writes the full model in ``save_pretrained`` form (gathered under
  ZeRO-3) plus DeepSpeed's own sharded checkpoint under ``deepspeed/`` (optimiser, scheduler,
  fp32 master weights); ``load`` restores the latter. With ``model.lora`` both hold the adapter
  alone (peft's format; DeepSpeed's ``exclude_frozen_parameters``): the frozen base is ``model.path``.
* **Ranks.** Under ``torchrun`` / ``deepspeed`` launchers the usual ``RANK``/``WORLD_SIZE``/
  ``LOCAL_RANK``/``MASTER_*`` variables are used; without them a one-process group is created
  (no MPI discovery). Backend: NCCL with CUDA, gloo on CPU.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

import torch

from agentrl.train_engine import enable_gradient_checkpointing, lr_lambda, optimizer_steps

log = logging.getLogger("agentrl.deepspeed")

MIN_VERSION = (0, 19, 5)
DS_SUBDIR = "deepspeed"
DS_TAG = "state"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_cpu_shm_comm() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op when its comm
    backend starts (minutes on a small machine). gloo does the same job, so it is skipped unless
    ``AGENTRL_DS_SHM_COMM=1``; DeepSpeed caches the compatibility probe, so the edit holds."""
    if torch.cuda.is_available() or os.environ.get("AGENTRL_DS_SHM_COMM") == "1":
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> tuple[int, int, int]:
    """Join (or create) the process group; returns ``(rank, world_size, local_rank)``."""
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:  # plain `agentrl train`: one process
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _skip_cpu_shm_comm()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = os.environ.get("AGENTRL_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size(), local_rank


def build_ds_config(cfg, world_size: int, n_params: int | None = None) -> dict:
    """The DeepSpeed JSON config for a :class:`agentrl.config.TrainConfig`.

    Communication buckets are DeepSpeed's default (5e8 elements) capped at the model size:
    ZeRO-1/2 allocate a reduce bucket per backward, 2 GB each on a small CPU model otherwise."""
    from agentrl.config import DeepSpeedConfig

    ds = cfg.deepspeed or DeepSpeedConfig()
    o = cfg.optim
    zero: dict = {"stage": ds.zero_stage}
    if n_params:
        bucket = int(min(5e8, max(n_params, 1 << 20)))
        bucket = -(-bucket // 1024) * 1024  # ZeRO wants a multiple of its alignment (2); a value head makes it odd
        zero.update(reduce_bucket_size=bucket, allgather_bucket_size=bucket)
    if ds.zero_stage == 1:
        zero["overlap_comm"] = False  # unmanaged accumulation supports overlap_comm only from stage 2
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config = {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": o.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if ds.bf16:
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return config


class DeepSpeedEngine:
    """``TrainEngine`` over a DeepSpeed ZeRO-1/2/3 engine (``cfg.deepspeed``: stage, offload, bf16)."""

    def __init__(self, model: torch.nn.Module, cfg):
        import deepspeed

        if _version_tuple(deepspeed.__version__) < MIN_VERSION:
            raise RuntimeError(f"engine: deepspeed needs deepspeed>={'.'.join(map(str, MIN_VERSION))} "
                               f"(unmanaged gradient accumulation); found {deepspeed.__version__}: "
                               f"pip install -U 'deepspeed>={'.'.join(map(str, MIN_VERSION))}'")
        from agentrl.config import DeepSpeedConfig

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.cfg = cfg
        self.ds_cfg = cfg.deepspeed or DeepSpeedConfig()
        dtypes = {p.dtype for p in model.parameters()}
        if torch.bfloat16 in dtypes and not self.ds_cfg.bf16:
            raise ValueError("model.dtype is bfloat16 but deepspeed.bf16 is false: set deepspeed.bf16: true "
                             "(DeepSpeed keeps fp32 master weights) or model.dtype: float32")
        if self.ds_cfg.bf16 and not torch.cuda.is_available():
            log.warning("deepspeed.bf16 on CPU: supported by DeepSpeed only partially; expect errors or slowness")
        self.rank, self.world_size, self.local_rank = init_distributed()
        enable_gradient_checkpointing(model, cfg.optim)
        self.model = model
        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        self.config = build_ds_config(cfg, self.world_size, sum(p.numel() for p in params))
        if self.ds_cfg.offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                                         adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        schedule = lr_lambda(o.warmup_steps, optimizer_steps(cfg), o.schedule)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            dist_init_required=False)
        self._pending = 0  # backward calls since the last step

    # -- properties --------------------------------------------------------------------------
    @property
    def zero_stage(self) -> int:
        return self.ds_cfg.zero_stage

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def lr(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    # -- training ----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dev = self.engine.device
        out = self.engine(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
        return out.logits

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The body's hidden states. The body and head are called as submodules of the wrapped
        model: under ZeRO-3 every submodule carries DeepSpeed's hooks, which gather its
        partitioned parameters for the call (and again in backward)."""
        dev = self.engine.device
        module = self.engine.module
        body = getattr(module, module.base_model_prefix)
        position_ids = position_ids.to(dev) if position_ids is not None else None
        return body(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), position_ids=position_ids,
                    use_cache=False).last_hidden_state

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.engine.module.get_output_embeddings()(hidden)

    def frozen_copy(self, model: torch.nn.Module):
        """A frozen model (the KL reference) placed like the policy: on the device, in the policy's
        dtype, and under ZeRO-3 partitioned over the ranks (a DeepSpeed inference engine without
        an optimiser, as OpenRLHF and verl hold their reference). Returns its ModelParts."""
        import deepspeed

        from agentrl.logprobs import CausalLMParts

        model.requires_grad_(False).eval()
        if self.zero_stage < 3:
            dtype = torch.bfloat16 if self.ds_cfg.bf16 else torch.float32
            return CausalLMParts(model.to(self.engine.device, dtype))
        config = {"train_micro_batch_size_per_gpu": self.config["train_micro_batch_size_per_gpu"],
                  "train_batch_size": self.config["train_batch_size"],
                  "zero_optimization": {"stage": 3, **({"offload_param": {"device": "cpu"}} if self.ds_cfg.offload else {})},
                  "steps_per_print": 1 << 30}
        if self.ds_cfg.bf16:
            config["bf16"] = {"enabled": True}
        engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
        return CausalLMParts(engine.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self._pending += 1

    def step(self) -> float:
        """The accumulation boundary: reduce, clip, optimiser, LR schedule, zero grads.

        A collective: every rank must call it (with or without gradients of its own)."""
        self.engine.step()
        self._pending = 0
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        if not self.engine.was_step_applied() and math.isfinite(norm):
            norm = float("nan")  # skipped (non-finite gradients): report it like TorchEngine
        return norm

    def zero_grad(self) -> None:
        """Drop accumulated gradients without an update.

        Gradients of earlier micro-batches have already been reduced into DeepSpeed's partitioned
        buffers, which no public API clears; they are discarded by a step DeepSpeed is guaranteed to
        skip: one non-finite gradient makes it skip the update, clear its buffers and leave the
        LR schedule alone. A collective when gradients are pending (all ranks must call it)."""
        if self._pending:
            dev = self.engine.device
            ids = torch.zeros((1, 2), dtype=torch.long, device=dev)
            logits = self.engine(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            self.engine.backward(logits.float().sum() * float("nan"), scale_wrt_gas=False)
            ds_log = logging.getLogger("DeepSpeed")
            level = ds_log.level
            ds_log.setLevel(logging.ERROR)  # the "OVERFLOW! Skipping step" warning is the point here
            try:
                self.engine.step()
            finally:
                ds_log.setLevel(level)
            if self.engine.was_step_applied():  # never expected; would have corrupted the weights
                raise RuntimeError("DeepSpeed applied a step with NaN gradients while discarding them")
            self.engine.skipped_steps -= 1
            self.engine.global_steps -= 1
            self._pending = 0
        self.engine.zero_grad()

    def scale_lr(self, factor: float) -> None:
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr * factor

    # -- data parallel helpers ---------------------------------------------------------------
    def all_reduce_sum(self, value):
        """Sum over ranks of a scalar (e.g. a minibatch's loss-mask token count; returns a float)
        or of a sequence of scalars in one collective (returns a list). Every rank must call it."""
        import torch.distributed as dist

        scalar = not isinstance(value, (list, tuple)) and not (isinstance(value, torch.Tensor) and value.dim() > 0)
        if scalar:
            t = torch.tensor([float(value)], dtype=torch.float64)
        elif isinstance(value, torch.Tensor):
            t = value.detach().reshape(-1).to("cpu", torch.float64)
        else:
            t = torch.tensor([float(v) for v in value], dtype=torch.float64)
        if self.world_size > 1 and t.numel():
            t = t.to(self.engine.device)
            dist.all_reduce(t)
        out = [float(v) for v in t.cpu()]
        return out[0] if scalar else out

    def all_gather_object(self, obj):
        """Every rank's picklable ``obj``, in rank order (a collective)."""
        import torch.distributed as dist

        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def partitioned_weights(self) -> bool:
        """ZeRO-3: the module's parameters are shards; a forward gathers them (a collective)."""
        return self.zero_stage >= 3

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.barrier()

    # -- state -------------------------------------------------------------------------------
    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a rollout engine loads, on every rank (LoRA: merged into the base's names;
        a collective under ZeRO-3)."""
        from agentrl.lora import has_adapters, merged_state_dict

        weights = self._full_state_dict()
        return merged_state_dict(weights, self.model) if has_adapters(self.model) else weights

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's full state dict on every rank (a collective under ZeRO-3: parameters are
        gathered one at a time and copied to the CPU, so no rank holds two full copies on the device)."""
        if self.zero_stage < 3:
            return self.model.state_dict()
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        done: dict[int, torch.Tensor] = {}
        for name, t in self.model.state_dict(keep_vars=True).items():
            if id(t) in done:  # tied weights
                out[name] = done[id(t)]
                continue
            if hasattr(t, "ds_id"):
                with deepspeed.zero.GatheredParameters([t], modifier_rank=None):
                    full = t.detach().to("cpu", copy=True)
            else:
                full = t.detach().to("cpu", copy=True)
            out[name] = done[id(t)] = full
        return out

    def save(self, directory: Path) -> None:
        """All ranks must call it with the same (shared) directory."""
        from agentrl.lora import has_adapters, save_adapters

        directory = Path(directory)
        lora = has_adapters(self.model)
        weights = self._full_state_dict()
        if self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            if lora:  # the adapter alone (peft's format); the frozen base is model.path
                save_adapters(self.model, directory, weights)
            else:
                self.model.save_pretrained(directory, state_dict=weights, safe_serialization=True)
        del weights
        self.barrier()
        # LoRA: DeepSpeed's module state without the frozen base either (its optimiser holds the adapters)
        self.engine.save_checkpoint(str(directory / DS_SUBDIR), tag=DS_TAG, save_latest=False,
                                    exclude_frozen_parameters=lora)
        self.barrier()

    def load(self, directory: Path) -> None:
        """Restores weights, optimiser and LR schedule from DeepSpeed's checkpoint in ``directory``
        (written by :meth:`save` with the same world size and ZeRO stage)."""
        ds_dir = Path(directory) / DS_SUBDIR
        if not (ds_dir / DS_TAG).is_dir():
            raise FileNotFoundError(f"{directory} has no DeepSpeed state ({DS_SUBDIR}/{DS_TAG}); "
                                    f"it was not written by the deepspeed engine")
        from agentrl.lora import has_adapters

        # LoRA: the saved module state lacks the frozen base (exclude_frozen_parameters), which stays as loaded
        path, _ = self.engine.load_checkpoint(str(ds_dir), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True,
                                              load_module_strict=not has_adapters(self.model))
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {ds_dir}")
        self._pending = 0
