"""Answer checkers that score as the reference implementations do.

Math: ``math_equal`` is Qwen2.5-Math's grader (see ``agentrl.math_grader``), which ReTool
reports with. QA, after SQuAD normalisation:

* ``exact_match`` and ``cover_exact_match``: Search-R1's ``em_check`` and ``subem_check``
  (= AutoRefine's ``cover_em_check``: the normalised gold occurs in the normalised prediction,
  as a raw substring), PeterGriffinJin/Search-R1 ``verl/utils/reward_score/qa_em.py``.
* ``f1_score``: AutoRefine's ``compute_f1_scores`` (syr-cn/AutoRefine
  ``verl/utils/reward_score/qa_em.py``), the HotpotQA rule: when either side is yes / no /
  noanswer and they differ, F1 is 0 (plain SQuAD F1 would give "yes, it is" vs "yes" 0.5).
* ``contains_answer``: is a gold answer in this text (AutoRefine's refine reward)?
"""
from __future__ import annotations

import collections
import re
import string

from agentrl.math_grader import MAX_ANSWER_CHARS, math_equal

__all__ = ["MAX_ANSWER_CHARS", "contains_answer", "cover_exact_match", "exact_match", "f1_score", "math_equal",
           "normalize_answer"]
_PUNCTUATION = set(string.punctuation)
_YES_NO = ("yes", "no", "noanswer")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(prediction: str | None, golds: list[str]) -> float:
    if prediction is None:
        return 0.0
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def cover_exact_match(prediction: str | None, golds: list[str]) -> float:
    """Cover-EM: a normalised gold answer is a substring of the normalised prediction."""
    if prediction is None:
        return 0.0
    p = normalize_answer(prediction)
    return float(any(normalize_answer(g) in p for g in golds))


def f1_score(prediction: str | None, golds: list[str], yes_no_rule: bool = True) -> float:
    """Token F1, best over the golds. ``yes_no_rule`` (AutoRefine / HotpotQA, the default):
    yes / no / noanswer must match exactly; ``False`` gives plain SQuAD F1."""
    if prediction is None:
        return 0.0
    best = 0.0
    pred = normalize_answer(prediction)
    for g in golds:
        gold = normalize_answer(g)
        if yes_no_rule and (pred in _YES_NO or gold in _YES_NO) and pred != gold:
            continue
        pred_tokens, gold_tokens = pred.split(), gold.split()
        same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(text: str, golds: list[str], rule: str = "token") -> bool:
    """Does a normalised gold answer occur in the normalised ``text``?

    ``rule="token"`` (agentrl's default) matches whole tokens, so the gold "Au" is not found
    inside "authors"; ``rule="autorefine"`` is AutoRefine's ``cover_em_check``, a raw substring.
    """
    if rule == "autorefine":
        return bool(cover_exact_match(text, golds))
    if rule != "token":
        raise ValueError(f"rule must be 'token' or 'autorefine', got {rule!r}")
    norm = f" {normalize_answer(text)} "
    return any(g and f" {g} " in norm for g in (normalize_answer(x) for x in golds))
