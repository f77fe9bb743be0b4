"""Overlapped rollouts (``rollout.mode: async``): a worker process samples the next batches while
the trainer updates on the current one.

The pipeline is verl's one-step-off-policy recipe (``recipe/one_step_off_policy``: generate batch
t+1 while training on batch t) with AReaL's bounded staleness (``max_head_offpolicyness``: a
batch may be requested only while ``its step <= current version + max_staleness``) and
PipelineRL's bookkeeping (every sample records the weights version that produced it):

* The trainer keeps a shared-memory copy of the policy's state dict (``share_memory_()``
  tensors, handed to the worker once, at start). After every optimiser step it copies the new
  weights in and bumps the version under a lock (``push``). With ``max_staleness <= 1`` the
  worker's module *is* that copy (its parameters are the shared tensors) and it holds the lock
  while it plays a batch, so a push waits for the batch in play -- the one the trainer takes
  next anyway, so nothing overlapped is lost, and one copy of the weights is saved (108 MB at
  the ``small`` size). With K >= 2 the trainer must be able to push while the worker plays, so
  the worker keeps its own copy and loads the newest version, if it changed, before each
  request.
* Requests carry what a sync step would sample: (tasks, group size, seed), drawn by the
  trainer's ``BatchSampler`` in the run's order with the same per-step seeds, so the data order
  and seeds are those of ``sync``. The worker plays them with its own ``Collector`` (same env id,
  kwargs and ``CollectorConfig``) and answers with the trajectories and the version it used.
* Staleness: batch s is requested once the trainer holds version >= s - K, and the worker
  samples it with a version at least that new, so at step s its staleness is <= K (checked on
  receipt). K = 0: batch s is requested only after step s - 1's weights are pushed -- no
  overlap, and exactly the sync run's batches (tested). K = 1: batch s + 1 is sampled with
  version s while the trainer updates on batch s.
* Restore (resume, collapse guard): in-flight batches are discarded (requests below a cancel
  mark are skipped by the worker, their late answers dropped) and the pipeline restarts from
  the restored weights and data position. A worker that dies (killed, crashed, broken pipe)
  is a ``RolloutWorkerError`` in the trainer, never a hang: the answers come through a pipe
  whose only write end is the worker's (its death is EOF), and every wait checks liveness.

The protocol (requests in, trajectories + version out, weights through a versioned shared
state dict) is engine-agnostic; today the worker runs ``HFEngine`` (vLLM: refused by the config,
not yet). Off-policy correction: the config's decoupled-objective defaults (see
``TrainConfig._async_rollouts``); PPO's ratio is taken against the recomputed proximal policy.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from agentrl.types import Trajectory

log = logging.getLogger("agentrl.async_rollout")
_POLL_S = 1.0  # how often a waiting trainer checks that the worker is alive


class RolloutWorkerError(RuntimeError):
    """The rollout worker died or failed; the message says how."""


@dataclass
class RolloutRequest:
    id: int
    kind: str  # "collect" | "probe"
    step: int = 0
    """The training step the batch is for."""
    tasks: list[dict] = field(default_factory=list)
    group_size: int = 1
    seed: int = 0
    names: list[str] = field(default_factory=list)
    """``probe``: state-dict names whose tensors the worker sends back."""


@dataclass
class RolloutResult:
    id: int
    version: int = -1
    """The weights version the worker held when it played the request."""
    trajectories: list[Trajectory] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    shares_weights: bool | None = None
    """``probe``: whether every parameter of the worker's module is shared memory."""


@dataclass
class Batch:
    """One received batch, with what the trainer drew for it."""

    step: int
    tasks: list[dict]
    seed: int
    data_pos: int
    """The sampler's position after this batch's tasks (what a checkpoint after it saves)."""
    trajectories: list[Trajectory]
    version: int
    timing: dict[str, float]
    wait_s: float
    """Seconds the trainer waited for it (0 when it was already there)."""


class AsyncRollouts:
    """The trainer's side: the worker process, the shared weights and the requests in flight."""

    def __init__(self, cfg, sampler, state_dict: dict[str, torch.Tensor], version: int, start_method: str = "spawn"):
        """``start_method``: "fork" (CPU: the worker shares the trainer's modules) or "spawn"."""
        from agentrl.sampling import collector_config, env_kwargs

        self.cfg, self.sampler = cfg, sampler
        self.max_staleness = cfg.rollout.max_staleness
        ctx = torch.multiprocessing.get_context(start_method)
        self.shared = _shared_copy(state_dict)
        self.last_push_wait_s = 0.0
        """How long the last push waited for the batch in play (an aliased worker's): rollout wait, not push."""
        self.lock = ctx.Lock()
        self.version = ctx.Value("q", version, lock=False)
        self.push_id = ctx.Value("q", 0, lock=False)  # bumped by every push: the worker reloads when it moves
        self.cancel_below = ctx.Value("q", 0, lock=False)  # requests with a smaller id are skipped
        req_r, self._requests = ctx.Pipe(duplex=False)
        self._results, res_w = ctx.Pipe(duplex=False)
        spec = {"model_path": cfg.model.path, "num_threads": cfg.rollout.num_threads, "env_id": cfg.env.id,
                "env_kwargs": env_kwargs(cfg), "collector": collector_config(cfg),
                "alias_weights": self.max_staleness <= 1, "share_prefix": cfg.rollout.share_prefix}
        self.proc = ctx.Process(target=worker_main, name="agentrl-rollout-worker", daemon=True,
                                args=(spec, self.shared, self.version, self.push_id, self.lock, self.cancel_below,
                                      req_r, res_w))
        if start_method == "fork":
            # The worker shares the trainer's pages (torch, transformers: ~200 MB) copy-on-write;
            # frozen, the cyclic collector of neither process writes to (and so copies) them.
            gc.collect()
            gc.freeze()
        self.proc.start()
        req_r.close()  # the worker's ends: only its copies stay open, so its death is EOF here
        res_w.close()
        self._inbox: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="agentrl-rollout-results", daemon=True)
        self._reader.start()
        self._next_id = 0
        self._early: dict[int, RolloutResult] = {}
        self.pending: deque[tuple[RolloutRequest, int]] = deque()  # (request, data_pos after it), in step order
        self.next_step = version
        self.consumed_data_pos = sampler.data_pos
        self.discarded = 0
        self.fill(version)

    # -- the pipeline ---------------------------------------------------------------------------
    def fill(self, version: int) -> None:
        """Request every batch the staleness bound allows with weights ``version`` held."""
        r = self.cfg.rollout
        while self.next_step <= version + self.max_staleness and self.next_step < self.cfg.run.steps:
            tasks = self.sampler.next_tasks(r.tasks_per_step)
            req = RolloutRequest(self._new_id(), "collect", self.next_step, tasks, r.group_size,
                                 self.sampler.seed(self.next_step))
            self._send(req)
            self.pending.append((req, self.sampler.data_pos))
            self.next_step += 1

    def take(self, step: int) -> Batch:
        """Step ``step``'s batch (waits for the worker if it is not there yet)."""
        if not self.pending or self.pending[0][0].step != step:
            raise RuntimeError(f"no rollout request in flight for step {step} "
                               f"(pending: {[req.step for req, _ in self.pending]})")
        req, data_pos = self.pending.popleft()
        start = time.perf_counter()
        res = self._wait(req.id, f"step {step}'s batch")
        wait_s = time.perf_counter() - start
        if step - res.version > self.max_staleness:  # cannot happen by construction; never train on it if it does
            raise RolloutWorkerError(f"step {step}'s batch was sampled with weights version {res.version}, older than "
                                     f"rollout.max_staleness={self.max_staleness} allows")
        self.consumed_data_pos = data_pos
        return Batch(step, req.tasks, req.seed, data_pos, res.trajectories, res.version, res.timing, wait_s)

    def push(self, state_dict: dict[str, torch.Tensor], version: int) -> float:
        """Copy the new weights into the shared state dict as ``version``; returns the seconds the
        copy took (the wait for the lock before it: ``last_push_wait_s``)."""
        start = time.perf_counter()
        with self._locked():  # an aliased worker holds it while it plays a batch: this waits for that batch
            locked = time.perf_counter()
            with torch.no_grad():
                for name, dst in self.shared.items():  # a tied copy twice: a few MB, not worth a seen-set
                    dst.copy_(state_dict[name])
            self.version.value = version
            self.push_id.value += 1
        self.last_push_wait_s = locked - start
        return time.perf_counter() - locked

    def restart(self, state_dict: dict[str, torch.Tensor], version: int, data_pos: int) -> None:
        """After a restore: drop the batches in flight, push ``state_dict`` and request again from
        step ``version`` at ``data_pos``."""
        self.discarded += len(self.pending)
        self.cancel_below.value = self._next_id
        self.pending.clear()
        self.sampler.data_pos = self.consumed_data_pos = data_pos
        self.next_step = version
        self.push(state_dict, version)
        self.fill(version)

    def probe(self, names: list[str]) -> tuple[int, dict[str, torch.Tensor]]:
        """The worker's current (newest pushed) tensors ``names`` and their version: what it samples with.
        Also sets ``worker_shares_weights``: whether every parameter of its module is shared memory."""
        req = RolloutRequest(self._new_id(), "probe", names=list(names))
        self._send(req)
        res = self._wait(req.id, "a weights probe")
        self.worker_shares_weights = res.shares_weights
        return res.version, {n: torch.from_numpy(a) for n, a in res.tensors.items()}

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self._requests.send(None)
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self._requests.close()
        self.proc = None

    # -- plumbing -----------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _send(self, req: RolloutRequest) -> None:
        try:
            self._requests.send(req)
        except OSError as exc:  # BrokenPipeError: the worker is gone
            raise self._dead(f"sending a request ({exc})") from None

    def _read(self) -> None:
        """Reader thread: the worker's answers into the inbox; None once the pipe closes."""
        try:
            while True:
                self._inbox.put(self._results.recv())
        except (EOFError, OSError):
            self._inbox.put(None)

    def _wait(self, request_id: int, what: str) -> RolloutResult:
        while request_id not in self._early:
            try:
                res = self._inbox.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise self._dead(f"waiting for {what}") from None
                continue
            if res is None:
                self._inbox.put(None)  # stays dead for later waits
                raise self._dead(f"waiting for {what}")
            if res.id == -1 or res.id >= self.cancel_below.value:
                self._early[res.id] = res  # else: a batch discarded by restart()
            if -1 in self._early:
                raise RolloutWorkerError(f"rollout worker failed to start:\n{self._early[-1].error}")
        res = self._early.pop(request_id)
        if res.error is not None:
            raise RolloutWorkerError(f"rollout worker failed on {what}:\n{res.error}")
        return res

    def _dead(self, doing: str) -> RolloutWorkerError:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return RolloutWorkerError(f"rollout worker (pid {self.proc.pid}) {how} while the trainer was {doing}; "
                                  "see its log above for the cause")

    @contextlib.contextmanager
    def _locked(self):
        while not self.lock.acquire(timeout=_POLL_S):  # a worker killed while loading would hold it forever
            if not self.proc.is_alive():
                raise self._dead("pushing weights")
        try:
            yield
        finally:
            self.lock.release()


def worker_main(spec: dict, shared: dict[str, torch.Tensor], version, push_id, lock, cancel_below, requests,
                results) -> None:
    """The rollout worker process: an HF module on the shared weights (``alias_weights``, when
    their dtypes and shapes fit the checkpoint's) or on its own copy, and its own Collector,
    playing requests in order until the trainer sends None (or goes away)."""
    torch.set_num_threads(spec["num_threads"])
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import agentrl  # noqa: F401  (registers the envs)
        from agentrl.collector import Collector
        from agentrl.engines.hf import HFEngine

        model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32).eval().requires_grad_(False)
        own = model.state_dict()
        alias = spec.get("alias_weights", False) and all(
            k in own and own[k].dtype == v.dtype and own[k].shape == v.shape for k, v in shared.items())
        del own
        if alias:  # the module's parameters become the shared tensors (its loaded ones are freed)
            missing, unexpected = model.load_state_dict(shared, strict=False, assign=True)
            if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
                raise ValueError(f"shared weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
            model.tie_weights()  # re-point a tied output embedding at the (shared) input one
        engine = HFEngine(model, tokenizer=AutoTokenizer.from_pretrained(spec["model_path"]),
                          num_threads=spec["num_threads"], share_prefix=spec["share_prefix"])
        collector = Collector(spec["env_id"], engine, spec["collector"], env_kwargs=spec["env_kwargs"])
    except Exception:
        results.send(RolloutResult(-1, error=traceback.format_exc()))
        return
    loaded, held = -1, -1
    try:
        while True:
            try:
                req = requests.recv()
            except EOFError:  # the trainer is gone
                break
            if req is None:
                break
            if req.id < cancel_below.value:
                continue  # discarded by a restore before it started
            try:
                if alias:
                    with lock:  # held while playing: a push waits for the batch, the weights cannot change under it
                        res = _play(req, model, collector, version.value)
                else:
                    with lock:
                        if push_id.value != loaded:
                            engine.update_weights(shared)
                            loaded, held = push_id.value, version.value
                    res = _play(req, model, collector, held)
            except Exception:
                res = RolloutResult(req.id, error=traceback.format_exc())
            results.send(res)
    finally:
        collector.close()  # closes the envs and with them their sandboxes
    # Everything is closed and every answer sent: exit now (a forked worker must not run the
    # trainer's exit handlers). A spawned worker's own interpreter shutdown was seen to stall ~30 s
    # here (no Python thread left but the main one), which would make every trainer.close() wait.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _play(req: RolloutRequest, model, collector, held: int) -> RolloutResult:
    """One request played with weights version ``held``."""
    if req.kind == "probe":
        own = model.state_dict()
        return RolloutResult(req.id, held, tensors={n: own[n].detach().numpy().copy() for n in req.names},
                             shares_weights=all(p.is_shared() for p in model.parameters()))
    start, cpu = time.perf_counter(), time.process_time()
    trajs = collector.collect(req.tasks, req.group_size, seed=req.seed)
    for t in trajs:
        t.policy_version = held
    return RolloutResult(req.id, held, trajs, {**collector.timing, "collect_s": time.perf_counter() - start,
                                               "worker_cpu_s": time.process_time() - cpu})


def _shared_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A shared-memory copy of ``state_dict``; names that share one tensor (tied embeddings)
    share one copy."""
    copies: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in state_dict.items():
        key = t.data_ptr()
        if key not in copies:
            copies[key] = t.detach().to("cpu", copy=True).contiguous().share_memory_()
        out[name] = copies[key]
    return out
