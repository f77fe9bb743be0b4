"""scripts/cpu_learning_run.sh end to end, shortened (a few steps of each stage): the search
runs build their index in the run, train in Search-v0 / AutoRefine-v0 (in-process index, or the
retrieval server over loopback with SERVE=1), plot, and evaluate one-hop and two-hop apart; the ToolUse run likewise, per task kind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def short_run(tmp_path: Path, task: str, **env) -> Path:
    bin_dir = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TASK": task, "OUT_ROOT": str(tmp_path),
                   "PRETRAIN_STEPS": "5", "COPY_TARGET": "0.0", "SFT_STEPS": "4", "EVAL": "1", "EVAL_LIMIT": "2", "OMP_NUM_THREADS": "1", **env}
    overrides = ["run.steps=2", "run.save_every=2", "rollout.tasks_per_step=2", "rollout.group_size=2", "run.progress=false"]
    result = subprocess.run(["bash", "scripts/cpu_learning_run.sh", "0", *overrides], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / "seed0"


@pytest.mark.slow
@pytest.mark.parametrize("task,serve", [("search", "0"), ("search", "1"), ("autorefine", "0")])
def test_shortened_search_run_end_to_end(tmp_path, task, serve):
    out = short_run(tmp_path, task, SERVE=serve)
    steps = [json.loads(line)["step"] for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (out / "index" / "manifest.json").is_file() and (out / "reward.png").stat().st_size > 0
    for stage in ("sft", "grpo"):
        metrics = json.loads((out / "eval" / stage / "metrics.json").read_text())
        assert {"kb_1hop", "kb_2hop"} <= set(metrics), metrics.keys()
    assert "kb_2hop" in (out / "eval" / "compare.txt").read_text()
    for stage in ("train_sft", "train_grpo"):  # the training reward on fixed training questions
        assert "reward" in json.loads((out / "eval" / stage / "metrics.json").read_text())["kb_train"]
    assert "kb_train" in (out / "eval" / "train_compare.txt").read_text()
    if serve == "1":  # the episodes' retriever was the server (a 4-step SFT model rarely searches, so the
        # stats may count no query; that the server answers the env's HTTP calls is tests/test_retrieval_*)
        config = yaml.safe_load((out / "grpo" / "config.yaml").read_text())
        assert config["env"]["kwargs"]["retriever_url"].startswith("http://127.0.0.1:")
        assert config["env"]["kwargs"]["index_dir"] is None
        assert "queries" in json.loads((out / "retrieval_stats.json").read_text())


@pytest.mark.slow
def test_shortened_tooluse_run_end_to_end(tmp_path):
    """TASK=tooluse: a model with the tool-call drills, chat-format SFT, GRPO in ToolUse-v0 and
    the held-out eval per task kind, with how often each kind called the right tools."""
    out = short_run(tmp_path, "tooluse")
    records = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("reward/right_tools" in r for r in records)
    for stage in ("sft", "grpo"):
        metrics = json.loads((out / "eval" / stage / "metrics.json").read_text())
        assert {"tooluse_lookup", "tooluse_arithmetic", "tooluse_both"} <= set(metrics), metrics.keys()
