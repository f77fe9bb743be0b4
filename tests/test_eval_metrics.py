"""Eval metrics against hand-computed values: unbiased pass@k, maj@k, the (paired) bootstrap,
per-question tool metrics, aggregation; and the eval config's options."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest

from agentrl.config import ConfigError
from agentrl.eval.config import EvalConfig, EvalSuite, load_eval_config
from agentrl.eval.metrics import (aggregate, bootstrap_ci, majority_correct, paired_bootstrap_diff, pass_at_k,
                                  question_scores, suite_average)
from agentrl.eval.run import load_dataset


def test_pass_at_k_hand_values_and_the_comb_formula():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0 and pass_at_k(32, 32, 1) == 1.0
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    with pytest.raises(ValueError, match="pass@5"):
        pass_at_k(4, 1, 5)


def test_majority_vote_pools_equivalent_answers():
    # "5" and "\frac{10}{2}" are one answer (2 votes) against "6" (1 vote); None does not vote.
    assert majority_correct(["6", "5", "\\frac{10}{2}", None, None], [False, True, True, False, False], "math") == 1.0
    assert majority_correct(["6", "5"], [False, True], "math") == 0.0  # a tie goes to the first answer
    assert majority_correct(["5", "6"], [True, False], "math") == 1.0
    assert majority_correct(["London", "The Paris", "paris!"], [False, True, True], "qa") == 1.0
    assert majority_correct([None, None], [False, False], "math") == 0.0
    assert majority_correct(["9" * 100_000, "}{" * 50_000, "5"], [False, False, True], "math") == 0.0  # hostile: no hang


def test_bootstrap_interval_hand_computed():
    # Mean of 4 draws from {0,0,0,1}: 4 * mean ~ Binomial(4, 1/4). P(0) = 0.316 > 2.5%, so the low
    # end is 0; P(<= 0.5) = 0.949 < 97.5% <= P(<= 0.75) = 0.996, so the high end is 0.75.
    num, den = np.array([0.0, 0.0, 0.0, 1.0]), np.ones(4)
    assert bootstrap_ci([(num, den)], n_boot=20_000, seed=1) == (0.0, 0.75)
    # Two strata averaged: each stratum constant, so the interval is a point.
    assert bootstrap_ci([(np.ones(3), np.ones(3)), (np.zeros(5), np.ones(5))], n_boot=500) == (0.5, 0.5)
    # Seeds change the draws, not the estimand.
    lo1, hi1 = bootstrap_ci([(np.arange(50.0) % 3, np.ones(50))], n_boot=200, seed=0)
    lo2, hi2 = bootstrap_ci([(np.arange(50.0) % 3, np.ones(50))], n_boot=200, seed=7)
    assert (lo1, hi1) != (lo2, hi2) and lo1 < 1.0 < hi1


def test_paired_bootstrap_hand_computed():
    one = np.ones(4)
    assert paired_bootstrap_diff((np.zeros(4), one), (one, one), n_boot=200) == (1.0, 1.0, 1.0)
    same = np.array([0.0, 1.0, 1.0, 0.0])
    assert paired_bootstrap_diff((same, one), (same.copy(), one), n_boot=200) == (0.0, 0.0, 0.0)  # paired: no noise
    # Per-question differences {1, 0}: the resampled mean is 0, 0.5 or 1 w.p. 1/4, 1/2, 1/4.
    diff, lo, hi = paired_bootstrap_diff((np.array([0.0, 1.0]), np.ones(2)), (np.ones(2), np.ones(2)), n_boot=20_000)
    assert (diff, lo, hi) == (0.5, 0.0, 1.0)


def _sample(answer, correct, calls=0, error=False, latency=0.0, tokens=10, turns=1):
    tool_turn = {"text": "t", "calls": [{"name": "python", "arguments": {}}] * calls,
                 "observation": "Traceback (most recent call last):\nZeroDivisionError: x" if error else "42",
                 "tool_latency_s": latency, "n_parse_errors": 0}
    answer_turn = {"text": "a", "calls": [], "observation": "", "tool_latency_s": 0.0, "n_parse_errors": 0}
    return {"answer": answer, "scores": {"correct": float(correct)}, "reward": float(correct),
            "response_tokens": tokens, "turns": [tool_turn] * (turns - 1) + [answer_turn]}


def test_question_scores_math_and_tool_metrics():
    samples = [_sample("5", True, calls=2, latency=0.3, turns=2), _sample("6", False, calls=1, error=True, latency=0.1, turns=2),
               _sample(None, False, tokens=40), _sample("5", True, calls=1, latency=0.2, turns=3)]
    q = question_scores("math", samples)
    assert q["avg@4"] == (0.5, 1.0) and q["pass@1"] == (0.5, 1.0)
    assert q["pass@2"][0] == pytest.approx(1 - comb(2, 2) / comb(4, 2)) and q["pass@4"] == (1.0, 1.0)
    assert q["maj@4"] == (1.0, 1.0)
    assert q["answered"] == (0.75, 1.0) and q["tool_use"] == (0.75, 1.0)
    assert q["tool_calls"] == (1.25, 1.0)  # (2 + 1 + 0 + 2) / 4: the last sample has two tool turns
    assert q["turns"] == (2.0, 1.0) and q["response_tokens"] == (17.5, 1.0)
    # Rates are ratios of sums: 1 erroring tool turn of 4 tool turns; 0.3+0.1+0.2+0.2 s over 5 calls.
    assert q["tool_error_rate"] == (1.0, 4.0)
    assert q["tool_latency_s"][0] == pytest.approx(0.8) and q["tool_latency_s"][1] == 5.0


def test_question_scores_qa():
    samples = [{**_sample("Paris", True), "scores": {"correct": 1.0, "em": 1.0, "f1": 1.0, "cover_em": 1.0}},
               {**_sample("in Paris", False), "scores": {"correct": 0.0, "em": 0.0, "f1": 2 / 3, "cover_em": 1.0}}]
    q = question_scores("qa", samples)
    assert q["em"] == (0.5, 1.0) and q["f1"][0] == pytest.approx(5 / 6) and q["cover_em"] == (1.0, 1.0)
    assert "avg@2" not in q and q["pass@2"] == (1.0, 1.0) and q["maj@2"] == (1.0, 1.0)  # tie: first answer
    assert "pass@1" not in question_scores("qa", samples[:1])  # k = 1: EM is the whole story


def test_reported_components_are_metrics_over_the_samples_that_report_them():
    """ToolUse-v0's _right_tools / _called_search: the share of samples, before and after GRPO."""
    samples = [{**_sample("5", True), "components": {"em": 1.0, "_right_tools": 1.0, "_called_search": 1.0}},
               {**_sample("6", False), "components": {"em": 0.0, "_right_tools": 0.0, "_called_search": 1.0}},
               {**_sample("7", False), "components": {"em": 0.0, "_right_tools": 1.0}}]
    q = question_scores("qa", [{**s, "scores": {"correct": 0.0, "em": 0.0, "f1": 0.0, "cover_em": 0.0}} for s in samples])
    assert q["right_tools"] == (2.0, 3.0) and q["called_search"] == (2.0, 2.0) and "em" in q and "_right_tools" not in q
    # AutoRefine-v0 reports _em / _f1 beside its F1 reward: kept apart, the eval's own em is not replaced
    refine = [{**s, "scores": {"correct": 0.0, "em": 0.0, "f1": 0.0, "cover_em": 0.0}, "components": {"_em": 1.0, "_f1": 0.5}}
              for s in samples]
    r = question_scores("qa", refine)
    assert r["em"] == q["em"] and r["f1"] == q["f1"] and r["env_em"] == (3.0, 3.0) and r["env_f1"] == (1.5, 3.0)
    # a component only some questions report: averaged over those, wherever the first question is
    out = aggregate([{"m": (1.0, 1.0)}, {"m": (0.0, 1.0), "right_tools": (1.0, 4.0)}], n_boot=50)
    assert out["right_tools"]["value"] == 0.25 and out["right_tools"]["n"] == 4


def test_aggregate_and_suite_average():
    qs = [{"m": (1.0, 1.0), "rate": (1.0, 2.0), "none": (0.0, 0.0)}, {"m": (0.0, 1.0), "rate": (0.0, 2.0), "none": (0.0, 0.0)}]
    out = aggregate(qs, n_boot=200, headline="m")
    assert out["m"]["value"] == 0.5 and out["m"]["n"] == 2 and out["m"]["headline"] and out["m"]["ci_low"] <= 0.5 <= out["m"]["ci_high"]
    assert out["rate"] == {**out["rate"], "value": 0.25, "n": 4} and "headline" not in out["rate"]
    assert "none" not in out  # nothing to average over
    avg = suite_average({"a": [{"m": (1.0, 1.0)}], "b": [{"m": (0.0, 1.0)}] * 3}, n_boot=200)
    assert avg["m"]["value"] == 0.5 and avg["m"]["n"] == 4  # unweighted over datasets, not 0.25


# -- config -------------------------------------------------------------------------------------
def test_eval_configs_validate_and_fast_changes_what_it_says():
    for name in ("aime24", "aime25", "math500", "multihop_qa"):
        full = load_eval_config(f"configs/eval/{name}.yaml", ["model=m"])
        fast = load_eval_config(f"configs/eval/{name}.yaml", fast=True)
        assert fast.model == "runs/tiny-model" and fast.limit and fast.max_total_tokens < full.max_total_tokens
    aime = load_eval_config("configs/eval/aime24.yaml", ["model=m"])
    assert (aime.k, aime.temperature, aime.top_p) == (32, 1.0, 0.7)  # ReTool: avg@32, T 1.0, top-p 0.7
    assert load_eval_config("configs/eval/aime24.yaml", fast=True).datasets[0].env_kwargs["max_turns"] == 3
    mul2 = load_eval_config("configs/eval/mul2_cpu.yaml", ["model=m"], fast=True)
    assert (mul2.k, mul2.limit, mul2.max_total_tokens) == (2, 20, 320)  # the CPU learning run's sampling
    qa = load_eval_config("configs/eval/multihop_qa.yaml", ["model=m"])
    assert len(qa.datasets) == 7 and all(d.env == "agentrl/AutoRefine-v0" and d.env_kwargs["topk"] == 3 for d in qa.datasets)


@pytest.mark.parametrize("overrides, message", [
    (["kk=3"], "unknown key 'kk'"),
    (["k=0"], "k: Input should be greater than or equal to 1"),
    ([], "engine hf needs model"),
    (["model=m", "engine=openai"], "engine openai needs url"),
    (["model=m", "url=http://127.0.0.1:1"], "url is set but engine is hf"),
    (["model=m", "max_new_tokens_per_turn=99999"], "max_new_tokens_per_turn exceeds max_total_tokens"),
])
def test_broken_configs_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_eval_config("configs/eval/aime24.yaml", overrides)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="eval config not found"):
        load_eval_config(tmp_path / "nope.yaml")
    (tmp_path / "nofast.yaml").write_text("datasets: [{name: a, path: x.jsonl}]\nmodel: m\n")
    with pytest.raises(ConfigError, match="no `fast:` mapping"):
        load_eval_config(tmp_path / "nofast.yaml", fast=True)
    suite = EvalSuite(datasets=[{"name": "a", "path": str(tmp_path / "absent.jsonl")}])
    with pytest.raises(FileNotFoundError, match=r"absent.jsonl .*shared/data"):
        load_dataset(suite.datasets[0])
    with pytest.raises(ValueError, match="exactly one of config"):
        EvalConfig(every=5)


def test_dataset_filters_change_the_rows(shared_data):
    path = str(shared_data / "qa" / "hotpotqa.jsonl")
    spec = lambda **kw: EvalSuite(datasets=[{"name": "h", "path": path, **kw}]).datasets[0]  # noqa: E731
    heldout, kind = load_dataset(spec())
    assert kind == "qa" and len(heldout) == 1503 and all(r["heldout"] for r in heldout)
    assert len(load_dataset(spec(heldout_only=False))[0]) == 7405
    assert len(load_dataset(spec(in_corpus_only=True))[0]) == 108
    assert len(load_dataset(spec(limit=5))[0]) == 5 and len(load_dataset(spec(limit=5), limit=3)[0]) == 3
    with pytest.raises(ValueError, match="has no 'answer' \\(kind math\\)"):
        load_dataset(spec(kind="math", limit=1))
    math_rows, math_kind = load_dataset(EvalSuite(datasets=[{"name": "a", "path": str(shared_data / "math" / "aime24.jsonl")}]).datasets[0])
    assert math_kind == "math" and len(math_rows) == 30  # eval files without a heldout field: every row


def test_trainer_eval_section_resolves_limit_and_k():
    cfg = EvalConfig(every=10, config="configs/eval/aime24.yaml", fast=True, limit=3, k=4)
    suite = cfg.resolve()
    assert isinstance(suite, EvalSuite) and (suite.limit, suite.k, suite.max_total_tokens) == (3, 4, 512)
    inline = EvalConfig(every=2, suite={"datasets": [{"name": "m", "path": "package:mul2_test.jsonl"}], "k": 2}, limit=None)
    assert (inline.resolve().k, inline.resolve().limit) == (2, None)
    with pytest.raises(ValueError, match="eval.fast"):
        EvalConfig(every=2, suite={"datasets": [{"name": "m", "path": "x"}]}, fast=True)
    with pytest.raises(ValueError, match="unknown|extra"):
        EvalConfig(every=2, config="x.yaml", evry=3)
