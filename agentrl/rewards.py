"""Answer checkers: mathematical equivalence (math-verify) and SQuAD-style EM / F1.

math-verify's own timeouts use ``signal.alarm`` (main thread only), so they are disabled and
time is bounded by capping the input length instead: these run inside collector threads.
"""
from __future__ import annotations

import collections
import re
import string

MAX_ANSWER_CHARS = 512


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip().rstrip("."))
    except ValueError:
        return None


def math_equal(prediction: str | None, gold: str) -> bool:
    """True when ``prediction`` equals ``gold`` mathematically (``0.5`` == ``\\frac{1}{2}``)."""
    if prediction is None or not prediction.strip():
        return False
    prediction, gold = prediction.strip()[:MAX_ANSWER_CHARS], str(gold).strip()
    a, b = _as_number(prediction), _as_number(gold)
    if a is not None and b is not None:  # fast path: most answers are plain numbers
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=None)
        pred_parsed = parse(f"${prediction}$", parsing_timeout=None) or parse(prediction, parsing_timeout=None)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:
        return False


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str | None, golds: list[str]) -> float:
    if prediction is None:
        return 0.0
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def f1_score(prediction: str | None, golds: list[str]) -> float:
    if prediction is None:
        return 0.0
    best = 0.0
    pred_tokens = normalize_answer(prediction).split()
    for g in golds:
        gold_tokens = normalize_answer(g).split()
        common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
