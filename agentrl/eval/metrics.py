"""Metrics as papers report them, per question, with bootstrap intervals over questions.

Every metric is a ratio of sums over questions: each question contributes ``(num, den)`` and
the metric is ``sum(num) / sum(den)``. Means over questions use ``den = 1``; per-call or
per-tool-turn rates (tool latency, tool error rate) use the count as ``den``. One statistic, so
one bootstrap serves every metric, for one run and for the paired difference of two runs.

* ``avg@k``: mean correctness over all k samples (math; for QA, ``em`` is the same quantity).
* ``pass@j`` for every j <= k: Chen et al. (2021)'s unbiased estimator ``1 - C(k-c, j) / C(k, j)``
  per question (c correct of k), in human-eval's numerically stable product form.
* ``maj@k``: the most frequent answer among the k samples, equivalent answers counted together
  (math: ``math_equal``; QA: equal after SQuAD normalisation), is correct. Unanswered samples do
  not vote; a tie goes to the answer seen first.
* QA: ``em`` (Search-R1's ``em_check``), ``f1`` (AutoRefine's, with the yes/no rule) and
  ``cover_em`` (``subem_check``), averaged over the k samples.
* Tool use, per episode unless named a rate: ``tool_calls``, ``tool_use`` (share of episodes
  with at least one call), ``tool_error_rate`` (share of tool turns, those with a call or a
  malformed call, whose observation reports an error: an ``Error:`` line, a traceback, a
  timeout or memory kill), ``turns``,
  ``response_tokens`` (sampled tokens), ``tool_latency_s`` (seconds per call), plus ``reward``
  (the environment's) and ``answered`` (share of episodes that gave an answer).
* What the environment reports beside its reward (components named ``_x``, e.g. ToolUse-v0's
  ``_right_tools``: the episode called exactly the tools its task kind needs) as ``x``, averaged
  over the samples that report it; as ``env_x`` where ``x`` is a metric computed here (AutoRefine's
  ``_em`` / ``_f1``: the headline ``em`` stays the question-level average of the grader's).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from agentrl.math_grader import math_equal
from agentrl.pseudo_labels import answer_classes
from agentrl.rewards import cover_exact_match, exact_match, f1_score

HEADLINE = {"math": "avg@{k}", "qa": "em"}
_TOOL_ERROR_RE = re.compile(r"(?m)^\s*(Traceback \(most recent call last\)|[A-Za-z_.]*Error: )")


def headline_metric(kind: str, k: int) -> str:
    return HEADLINE[kind].format(k=k)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (human-eval's ``estimate_pass_at_k``)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool], kind: str) -> float:
    """1.0 when the majority answer (equivalent answers pooled) is a correct one."""
    # the grader's default include_percentage (50 equals 0.5), as the reference's maj@k
    classes = answer_classes(answers, kind, include_percentage=True)
    if not classes:
        return 0.0
    best = max(classes, key=len)  # max keeps the first of equally large classes
    return float(correct[best[0]])


def score_sample(kind: str, answer: str | None, gold: Any) -> dict[str, float]:
    """Correctness (and for QA, EM / F1 / cover-EM) of one sample's final answer."""
    if kind == "math":
        return {"correct": float(math_equal(answer, str(gold)))}
    golds = [gold] if isinstance(gold, str) else list(gold)
    em = exact_match(answer, golds)
    return {"correct": em, "em": em, "f1": f1_score(answer, golds), "cover_em": cover_exact_match(answer, golds)}


def tool_turn_error(observation: str) -> bool:
    return bool(_TOOL_ERROR_RE.search(observation or ""))


def question_scores(kind: str, samples: list[dict]) -> dict[str, tuple[float, float]]:
    """``(num, den)`` of every metric for one question from its k sample records
    (as ``agentrl.eval.run`` builds them: answer, scores, reward, turns, response_tokens)."""
    k = len(samples)
    correct = [s["scores"]["correct"] for s in samples]
    out: dict[str, tuple[float, float]] = {}
    if kind == "math":
        out[f"avg@{k}"] = (sum(correct) / k, 1.0)
    else:
        for name in ("em", "f1", "cover_em"):
            out[name] = (sum(s["scores"][name] for s in samples) / k, 1.0)
    if kind == "math" or k > 1:
        c = int(sum(c >= 1.0 for c in correct))
        for j in range(1, k + 1):
            out[f"pass@{j}"] = (pass_at_k(k, c, j), 1.0)
        out[f"maj@{k}"] = (majority_correct([s["answer"] for s in samples], [c >= 1.0 for c in correct], kind), 1.0)
    calls = [sum(len(t["calls"]) for t in s["turns"]) for s in samples]
    tool_turns = [t for s in samples for t in s["turns"] if t["calls"] or t.get("n_parse_errors")]  # malformed calls too
    out.update({
        "reward": (sum(s["reward"] for s in samples) / k, 1.0),
        "answered": (sum(s["answer"] is not None for s in samples) / k, 1.0),
        "tool_calls": (sum(calls) / k, 1.0),
        "tool_use": (sum(c > 0 for c in calls) / k, 1.0),
        "tool_error_rate": (float(sum(tool_turn_error(t["observation"]) for t in tool_turns)), float(len(tool_turns))),
        "turns": (sum(len(s["turns"]) for s in samples) / k, 1.0),
        "response_tokens": (sum(s["response_tokens"] for s in samples) / k, 1.0),
        "tool_latency_s": (sum(t["tool_latency_s"] for s in samples for t in s["turns"]), float(sum(calls))),
    })
    for name in sorted({c for s in samples for c in s.get("components", {}) if c.startswith("_")}):
        values = [s["components"][name] for s in samples if name in s.get("components", {})]
        metric = name[1:] if name[1:] not in out else f"env_{name[1:]}"  # never replace the eval's own em / f1
        out[metric] = (float(sum(values)), float(len(values)))
    return out


# -- aggregation and the bootstrap ----------------------------------------------------------
def _resampled(num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` bootstrap replicates of sum(num)/sum(den), questions drawn with replacement."""
    idx = rng.integers(0, len(num), size=(n_boot, len(num)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num[idx].sum(1) / den[idx].sum(1)


def bootstrap_ci(strata: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean over strata (datasets) of each stratum's ratio, resampling
    questions within each stratum. One stratum: the plain question bootstrap."""
    rng = np.random.default_rng(seed)
    reps = np.mean([_resampled(num, den, n_boot, rng) for num, den in strata], axis=0)
    lo, hi = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def paired_bootstrap_diff(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], n_boot: int = 1000,
                          seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """``metric(b) - metric(a)`` over the same questions, and its paired percentile interval:
    each replicate draws one set of questions and evaluates both runs on it."""
    (na, da), (nb, db) = a, b
    diff = nb.sum() / db.sum() - na.sum() / da.sum()
    idx = np.random.default_rng(seed).integers(0, len(na), size=(n_boot, len(na)))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = nb[idx].sum(1) / db[idx].sum(1) - na[idx].sum(1) / da[idx].sum(1)
    lo, hi = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(diff), float(lo), float(hi)


def aggregate(per_question: list[dict[str, tuple[float, float]]], n_boot: int = 1000, seed: int = 0,
              headline: str | None = None) -> dict[str, dict]:
    """``{metric: {value, n, ci_low, ci_high}}`` for one dataset; ``n`` counts what the metric
    averages over (questions, or tool calls / tool turns for the rates). A rate with nothing to
    average over (no tool calls at all) is left out."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(name for q in per_question for name in q):  # every question's, in order
        num = np.array([q.get(name, (0.0, 0.0))[0] for q in per_question], dtype=float)  # a reported
        den = np.array([q.get(name, (0.0, 0.0))[1] for q in per_question], dtype=float)  # component may be missing
        if den.sum() <= 0:
            continue
        lo, hi = bootstrap_ci([(num, den)], n_boot, seed)
        entry = {"value": float(num.sum() / den.sum()), "n": int(round(den.sum())), "ci_low": lo, "ci_high": hi}
        if name == headline:
            entry["headline"] = True
        out[name] = entry
    return out


def suite_average(per_dataset: dict[str, list[dict[str, tuple[float, float]]]], n_boot: int = 1000,
                  seed: int = 0) -> dict[str, dict]:
    """Unweighted mean over datasets (as papers' "Avg." column) of the metrics all datasets have,
    with a bootstrap that resamples questions within each dataset."""
    first = next(iter(per_dataset.values()))[0]
    common = [m for m in first if all(m in qs[0] for qs in per_dataset.values())]
    out: dict[str, dict] = {}
    for name in common:
        strata = [(np.array([q[name][0] for q in qs], float), np.array([q[name][1] for q in qs], float))
                  for qs in per_dataset.values()]
        if any(den.sum() <= 0 for _, den in strata):
            continue
        lo, hi = bootstrap_ci(strata, n_boot, seed)
        value = float(np.mean([num.sum() / den.sum() for num, den in strata]))
        out[name] = {"value": value, "n": int(sum(len(num) for num, _ in strata)), "ci_low": lo, "ci_high": hi}
    return out
