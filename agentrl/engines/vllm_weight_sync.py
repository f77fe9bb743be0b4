"""Weight pushes into a running ``vllm.LLM`` without the disk (``VLLMEngine(weight_sync="memory")``).

Why shared memory, and not the field's other in-memory routes, in agentrl's setting:

* ``VLLMEngine`` runs ``vllm.LLM`` with V1 multiprocessing on (vLLM's default): the model lives in
  the engine-core process, not in the trainer's. TRL's and verl's colocated
  ``llm.llm_engine.model_executor.driver_worker...model.load_weights(state_dict.items())`` only
  reaches the model with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
* ``collective_rpc`` arguments cross a ZMQ socket as untyped msgpack: a tensor in ``kwargs`` does not
  arrive as a tensor, and a pickled callable needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``.
* vLLM 0.32's own weight-update API (``weight_transfer_config``: ``nccl``, ``ipc``, ...) moves CUDA
  tensors only; on GPUs it is the route to put behind ``weight_sync`` next.

So the trainer copies every tensor once into one POSIX shared-memory block (``/dev/shm``: RAM, not
the disk; ``SharedWeights`` keeps it, and the worker keeps it mapped, across pushes of the same
layout) and sends only its name and a manifest (name, dtype, shape, offset) through
``collective_rpc`` to a method that ``worker_extension_cls`` mixes into vLLM's worker (how verl and
OpenRLHF add their weight-sync methods). The worker maps the block, views the tensors in place and
hands them to vLLM's own in-place reload, ``reload_weights(weights_iterator=...)``: the loader the
file path uses, fed from memory instead of from safetensors files.
"""
from __future__ import annotations

import difflib
import functools
import gc
import inspect
import logging
import mmap
import os
from multiprocessing import shared_memory
from typing import Any

import torch

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "agentrl.engines.vllm_weight_sync.SharedMemoryWeightReceiver"
RPC_METHOD = "agentrl_load_shared_weights"
_ALIGN = 64  # every tensor starts on a cache line (and on any dtype's alignment)


@functools.lru_cache(maxsize=None)
def warn_once(message: str) -> None:
    logger.warning(message)


def memory_sync_unavailable(llm_kwargs: dict) -> str | None:
    """Why the in-memory push cannot run with the installed vLLM and these ``LLM`` options (None: it can)."""
    if llm_kwargs.get("worker_extension_cls") not in (None, WORKER_EXTENSION):
        return f"worker_extension_cls={llm_kwargs['worker_extension_cls']!r} is set (the shared-memory receiver is one)"
    try:
        from vllm.config import ParallelConfig
        from vllm.model_executor.model_loader.reload.inplace import reload_weights
    except ImportError as exc:
        return f"this vLLM has no in-place reload from tensors ({exc})"
    if "worker_extension_cls" not in getattr(ParallelConfig, "__dataclass_fields__", {}):
        return "this vLLM's ParallelConfig has no worker_extension_cls"
    if "weights_iterator" not in inspect.signature(reload_weights).parameters:
        return "this vLLM's reload_weights takes no weights_iterator"
    return None


# ---------------------------------------------------------------------------- validation
def expected_shapes(model_path: str) -> dict[str, tuple[int, ...]] | None:
    """The model's state-dict names and shapes, from its config alone (a meta-device HF model:
    no weights read), or None if transformers cannot build it."""
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception as exc:  # custom architectures: vLLM's loader is then the only check
        warn_once(f"update_weights: cannot build {model_path}'s state dict layout ({exc}); pushed names are not checked")
        return None


def check_state_dict(tensors: dict[str, Any], expected: dict[str, tuple[int, ...]] | None) -> None:
    """A clear error naming the first bad tensor, before anything reaches the workers: a failed
    reload half-way would leave vLLM's layers on the meta device and the engine unusable."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"update_weights: {name!r} is a {type(value).__name__}, not a tensor")
        if expected is None:
            continue
        if name not in expected:
            close = difflib.get_close_matches(name, list(expected), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"update_weights: unknown tensor {name!r}: the model has no such weight{hint}")
        if tuple(value.shape) != expected[name]:
            raise ValueError(
                f"update_weights: tensor {name!r} has shape {tuple(value.shape)}, the model's is {expected[name]}"
            )


# ---------------------------------------------------------------------------- trainer side
def _uint8_view(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _manifest(tensors: dict[str, torch.Tensor]) -> tuple[list[list], int]:
    """``[name, dtype, shape, offset, nbytes]`` per tensor, and the block size they need."""
    manifest, offset = [], 0
    for name, t in tensors.items():
        manifest.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, t.nbytes])
        offset += -(-t.nbytes // _ALIGN) * _ALIGN
    return manifest, max(offset, 1)


def _copy_in(block: shared_memory.SharedMemory, manifest: list[list], tensors: dict[str, torch.Tensor]) -> None:
    for (_, _, _, off, nbytes), t in zip(manifest, tensors.values()):
        if nbytes:
            torch.frombuffer(block.buf, dtype=torch.uint8, count=nbytes, offset=off).copy_(_uint8_view(t))


class SharedWeights:
    """The trainer's block, kept mapped across pushes while the names, dtypes and shapes stay the
    same (a new layout gets a new block). A fresh block per push costs a page fault and a kernel
    zero-fill of every page on both sides, each time (measured: 1.6x the file route's push time
    for 100 MB); reused, its pages stay resident in the trainer and the engine, as verl's bucketed
    sender keeps its buffers. It holds one copy of the weights in RAM (``/dev/shm``) for the
    engine's lifetime; ``close()`` unlinks it."""

    def __init__(self):
        self.block: shared_memory.SharedMemory | None = None
        self.manifest: list[list] = []

    def write(self, tensors: dict[str, torch.Tensor]) -> tuple[str, list[list]]:
        manifest, size = _manifest(tensors)
        if self.block is None or manifest != self.manifest:
            self.close()
            self.block, self.manifest = shared_memory.SharedMemory(create=True, size=size), manifest
        _copy_in(self.block, manifest, tensors)
        return self.block.name, manifest

    def close(self) -> None:
        if self.block is not None:
            self.block.close()
            self.block.unlink()
            self.block, self.manifest = None, []


def push(llm, tensors: dict[str, torch.Tensor], shared: SharedWeights) -> None:
    """Load ``tensors`` into every worker of ``llm`` through ``shared``'s kept block."""
    name, manifest = shared.write(tensors)
    llm.collective_rpc(RPC_METHOD, kwargs={"block_name": name, "manifest": manifest})


# ---------------------------------------------------------------------------- worker side
def _attach(name: str) -> mmap.mmap:
    """Map the trainer's block. Not through ``SharedMemory(name)``: before Python 3.13 every attach
    registers the block with the resource tracker, whose bookkeeping the trainer's ``unlink`` then
    trips over (the engine-core process shares the trainer's tracker); the trainer owns the block."""
    import _posixshmem  # what multiprocessing.shared_memory opens blocks with

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class SharedMemoryWeightReceiver:
    """Mixed into vLLM's worker (``LLM(worker_extension_cls=WORKER_EXTENSION)``); runs in the
    engine-core process, called through ``collective_rpc(RPC_METHOD, ...)``."""

    def agentrl_load_shared_weights(self, block_name: str, manifest: list[list]) -> int:
        # the mapping and its views are kept for the next push of the same block (the trainer
        # reuses it: ``SharedWeights``); another name, or a failed reload, drops them
        kept = getattr(self, "_agentrl_mapped", None)
        if kept is not None and (kept[0], kept[1]) != (block_name, manifest):
            self.agentrl_unmap_shared_weights()
            kept = None
        if kept is None:
            block = _attach(block_name)
            try:
                kept = (block_name, manifest, block, _views(block, manifest))
            except BaseException:
                _close(block)
                raise
            self._agentrl_mapped = kept
        try:
            self.reload_weights(weights_iterator=iter(kept[3]), is_checkpoint_format=True)  # type: ignore[attr-defined]
        except BaseException:
            self.agentrl_unmap_shared_weights()
            raise
        return len(manifest)

    def agentrl_unmap_shared_weights(self) -> None:
        kept = getattr(self, "_agentrl_mapped", None)
        self._agentrl_mapped = None
        if kept is not None:
            kept[3].clear()
            _close(kept[2])


def _views(block: mmap.mmap, manifest: list[list]) -> list[tuple[str, torch.Tensor]]:
    """The manifest's tensors as views into ``block`` (no copy)."""
    out = []
    for name, dtype, shape, offset, nbytes in manifest:
        dt = getattr(torch, dtype)
        if nbytes:
            flat = torch.frombuffer(block, dtype=torch.uint8, count=nbytes, offset=offset)
            out.append((name, flat.view(dt).view(shape)))
        else:  # torch.frombuffer refuses empty ranges
            out.append((name, torch.empty(shape, dtype=dt)))
    return out


def _close(block: mmap.mmap) -> None:
    """Unmap ``block``; views into it that something still holds (a traceback's frames) are
    dropped by a collection first, else the mapping goes when they do (the trainer unlinks the name)."""
    for attempt in range(2):
        try:
            block.close()
            return
        except BufferError:
            if attempt == 0:
                gc.collect()
    warn_once("update_weights: a view into the shared-memory block outlived the reload; it is unmapped when freed")
