"""GRPOTrainer under data parallelism, for real: ``torchrun --nproc_per_node 2 -m agentrl.cli
train configs/retool_tiny_cpu_deepspeed.yaml`` on the tiny model (two CPU processes, gloo).

Three groups over two ranks (2 + 1 groups) with micro-batches of 2 sequences: the short rank
pads with a zero-weighted micro-batch (ZeRO-2/3 backward passes are collectives). Each run
must exit 0 in bounded time, write one metrics line per step (rank 0 alone), complete
checkpoints (HF-loadable, one RNG file per rank) and resume; the resumed run injects a NaN
loss so the agreed non-finite decision, the collective discard and the guard's restore run too.

Run: ``python -m pytest -m deepspeed tests/test_trainer_distributed.py`` (after ``pip install deepspeed``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.deepspeed
deepspeed = pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "retool_tiny_cpu_deepspeed.yaml"
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, stage: int, steps: int, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    from agentrl.model import cached_tiny_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "agentrl.cli", "train", str(CONFIG),
           f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={out}",
           f"run.steps={steps}", "run.save_every=1", "run.progress=false", "run.tensorboard=false",
           "rollout.tasks_per_step=3", "rollout.group_size=2", "rollout.max_new_tokens_per_turn=12",
           "rollout.max_total_tokens=200", "env.kwargs.max_turns=2", "optim.micro_batch_size=2",
           "algorithm.entropy_coef=0.01", f"deepspeed.zero_stage={stage}", *extra]
    if resume:
        cmd.append("--resume")
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # a collective mismatch hangs rather than fails
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT_S}s (hang?):\n{(e.stderr or b'')[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_rank_training_checkpoints_and_resume(stage, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    proc = _train(out, stage, 2)
    assert proc.stdout.count("done: 2 steps") == 1  # rank 0 alone reports
    lines = _lines(out)
    assert [x["step"] for x in lines] == [1, 2]  # one line per step: rank 0 alone writes
    for x in lines:
        assert x["sampling/groups"] == 3.0  # global: 2 groups on rank 0 + 1 on rank 1
        assert x["train/entropy"] > 0 and x["train/loss"] == pytest.approx(-0.01 * x["train/entropy"], rel=1e-3)
        assert x["reward/mean"] == x["reward/mean"]  # finite: metrics reduced over ranks
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000001", "step_00000002"]  # no leftover .tmp- directories
    last = out / "checkpoints" / "step_00000002"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 2
    assert (last / "rng_rank0.pt").is_file() and (last / "rng_rank1.pt").is_file()
    assert (last / "deepspeed" / "state").is_dir()
    model = AutoModelForCausalLM.from_pretrained(last)  # plain HF load, no DeepSpeed involved
    assert sum(p.numel() for p in model.parameters()) > 0

    # resume: continue to step 3, with a NaN loss injected at the third step (guard restores step 2)
    proc = _train(out, stage, 3, "guard.inject_nan_at_step=2", resume=True)
    lines = _lines(out)
    # the failed third step is logged after the restore (step back to 2), then redone
    assert [x["step"] for x in lines] == [1, 2, 2, 3], proc.stderr[-3000:]
    assert lines[2].get("guard/restored") == 1.0 and "non-finite loss" in lines[2]["guard/reasons"]
    assert lines[3]["train/loss"] == lines[3]["train/loss"] and not lines[3].get("guard/restored")
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000002", "step_00000003"]  # keep_checkpoints: 2
    assert json.loads((out / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())["step"] == 3


def test_zero3_reference_model_is_partitioned_like_the_policy(tmp_path):
    # kl_coef > 0 under ZeRO-3: the reference is a DeepSpeed ZeRO-3 engine of its own
    # (DeepSpeedEngine.frozen_copy), run in micro-batches that every rank makes the same number of
    # (forwards gather parameters: a collective), here 2 + 1 groups over 2 ranks.
    out = tmp_path / "run"
    _train(out, 3, 1, "algorithm.kl_coef=0.05", "algorithm.kl_kind=k2", "algorithm.old_logprobs=recompute")
    (line,) = _lines(out)
    assert line["train/kl"] >= 0 and line["train/kl"] == line["train/kl"]
    assert line["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # recomputed old log-probs
    assert line["mismatch/abs_logp_diff_max"] < 1e-3
