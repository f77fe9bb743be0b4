"""``agentrl bench algorithms``: the budget (fast), the leaderboard windows (fast), unknown methods
(fast) and a real end-to-end leaderboard of 2 methods on the cached tiny model, then its resume (slow)."""
from __future__ import annotations

import json
import os

import pytest

from agentrl.bench import algorithms as ba
from agentrl.bench import algorithms_report as report
from agentrl.cli import main


def test_every_method_gets_the_same_number_of_episodes():
    for budget in (640, 3200):
        for name in ba.available_methods():
            tps, g = ba.recipe_shape(ba.METHODS[name])
            assert ba.steps_for_budget(budget, tps, g, name) * tps * g == budget, name
    shapes = {name: ba.recipe_shape(m) for name, m in ba.METHODS.items()}
    assert shapes["grpo"] == (8, 8) and shapes["remax"] == (32, 1) and shapes["ppo_gae"] == (64, 1)
    # reshaped alike: group methods T x G, group-of-one methods T*G x 1
    assert ba.recipe_shape(ba.METHODS["rloo"], 2, 2) == (2, 2)
    assert ba.recipe_shape(ba.METHODS["remax"], 2, 2) == (4, 1)


def test_a_budget_that_does_not_divide_is_refused_with_the_nearest_ones():
    with pytest.raises(ba.BudgetError, match=r"--episodes 100 .* 8 x 8 = 64 episodes: use 64 or 128"):
        ba.steps_for_budget(100, 8, 8, "grpo")
    with pytest.raises(ba.BudgetError, match="use 64"):
        ba.steps_for_budget(32, 8, 8, "grpo")


def test_plans_put_vapo_value_pretraining_outside_the_budget(tmp_path):
    plans = ba.plan_runs(["vapo", "remax"], [0, 1], 640, tmp_path / "sft", tmp_path)
    vapo = [p for p in plans if p.method == "vapo"]
    assert [(p.steps, p.pretrain_steps, p.total_steps) for p in vapo] == [(10, 1, 11)] * 2
    assert "critic.pretrain_steps=1" in vapo[0].overrides and "run.steps=11" in vapo[0].overrides
    remax = [p for p in plans if p.method == "remax"]
    assert remax[1].steps == 20 and remax[1].out == tmp_path / "remax" / "seed1"
    ba.validate_plans(plans)  # the configs parse


def test_reward_windows_are_the_last_tenth_of_the_budget_up_to_each_point():
    points = [(e, e / 100) for e in range(10, 101, 10)]  # 10 steps of 10 episodes, reward = e / 100
    assert report.window_mean(points, 100, 1.0) == pytest.approx(1.0)  # (90, 100]: the last step
    assert report.window_mean(points, 100, 0.5) == pytest.approx(0.5)
    assert report.window_mean(points, 100, 0.25) == pytest.approx(0.2)  # (15, 25]: step 2 only
    coarse = [(4, 0.1), (8, 0.3)]  # 2 steps: fewer than 10, so the last step at or before the point
    assert report.window_mean(coarse, 8, 0.25) is None
    assert report.window_mean(coarse, 8, 0.5) == pytest.approx(0.1)
    assert report.window_mean(coarse, 8, 1.0) == pytest.approx(0.3)


def test_ttrl_rows_are_scored_by_their_gold_reward():
    assert report.reward_key({"reward/mean": 1.0, "reward/gold_correct": 0.5, "reward/correct": 1.0}) == "reward/gold_correct"
    assert report.reward_key({"reward/mean": 1.0, "reward/correct": 0.5}) == "reward/correct"


def test_unknown_method_is_an_error_that_lists_the_methods(capsys):
    assert main(["bench", "algorithms", "--methods", "grpo", "ppo_nope", "--sft-model", "/nonexistent"]) == 2
    out = capsys.readouterr().out
    assert "unknown method(s) ppo_nope" in out
    for name in ("grpo", "drgrpo", "rloo", "reinforce_pp", "dapo", "ppo_gae", "vapo", "remax", "ttrl", "dpo"):
        assert name in out


def test_dpo_runs_only_when_installed_and_its_iterations_take_the_same_budget(tmp_path):
    status = ba.dpo_status()
    if status is not None:  # never faked: the row says why it has no numbers
        assert status.startswith("not available") and "dpo" not in ba.available_methods()
        return
    (plan,) = ba.plan_runs(["dpo"], [0], 640, tmp_path / "sft", tmp_path)
    assert (plan.command, plan.steps, plan.episodes_per_step) == ("dpo", 10, 64)
    assert "iterations=10" in plan.overrides and not any(o.startswith("run.steps") for o in plan.overrides)
    ba.validate_plans([plan])


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 6 subprocesses of a few CPU-seconds each; measured 48 min wall at nice 10 on 2 busy cores
def test_leaderboard_end_to_end_then_resume_skips_finished_runs(tmp_path, capsys):
    from agentrl.model import cached_tiny_model

    out = tmp_path / "board"
    argv = ["bench", "algorithms", "--methods", "grpo", "remax", "--seeds", "0", "--episodes", "8",
            "--tasks-per-step", "2", "--group-size", "2", "--eval-k", "1", "--eval-limit", "2",
            "--sft-model", str(cached_tiny_model()), "--out", str(out), "--set", "rollout.max_new_tokens_per_turn=16"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert main(argv) == 0, capsys.readouterr().out
    board = json.loads((out / "leaderboard.json").read_text())
    assert [m["method"] for m in board["methods"]] == ["grpo", "remax"]
    assert board["unavailable"] == {}
    grpo, remax = board["methods"]
    assert grpo["steps"] == 2 and remax["steps"] == 2 and remax["shape"] == "4 x 1"
    for m in (grpo, remax):
        assert m["seeds_finished"] == 1 and m["heldout"]["seeds"] == 1
        assert m["reward_at"]["1.0"] is not None and m["improves"] in ("yes", "no", "within noise")
        assert len(m["runs"][0]["curve"]) == 2
    assert "greedy episodes" in remax["extra_cost"] and remax["runs"][0]["extra"]["greedy_episodes"] == 8
    assert board["sft"]["heldout"]["metric"] == "avg@1" and board["sft"]["train_reward_episodes"] == 8
    md = (out / "leaderboard.md").read_text()
    for col in report.COLUMNS:
        assert col in md
    assert "| grpo |" in md and "| remax |" in md and "8 sampled trained-on episodes per run" in md
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "grpo" / "seed0" / "eval" / "metrics.json").is_file()

    # resume: a second invocation retrains nothing and re-evaluates nothing
    metrics = {m: (out / m / "seed0" / "metrics.jsonl").read_bytes() for m in ("grpo", "remax")}
    evals = {m: (out / m / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns for m in ("grpo", "remax")}
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 2
    assert {m: (out / m / "seed0" / "metrics.jsonl").read_bytes() for m in metrics} == metrics
    assert {m: (out / m / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns for m in evals} == evals
    assert json.loads((out / "grpo" / "seed0" / "bench_run.json").read_text())["invocations"] == 1
