"""Math answer grading as the Qwen2.5-Math evaluation does it (the grader ReTool reports with).

Ported from QwenLM/Qwen2.5-Math @ a45202bd16f1ec06f433442dc1152d0074773465,
``evaluation/parser.py`` (``extract_answer``'s boxed branch, ``strip_string``) and
``evaluation/grader.py`` (``math_equal``): both answers are normalised by ``strip_string``, then
compared as strings, as numbers (relative tolerance 1e-4, and the gold read as a percentage:
``gold/100`` and ``gold*100`` also count, as the reference's default ``include_percentage``), as
intervals / tuples / matrices element by element, as equations, and finally symbolically.

Deliberate differences, each marked where it happens:
* The symbolic step uses math-verify (HF's maintained LaTeX -> sympy checker) instead of the
  reference's chain of ``sympy.parse_latex`` / ``parse_expr`` / ``latex2sympy``: ``parse_expr``
  ``eval``s its input, which model text must never reach.
* Numbers are read by a strict regex, not ``float()``: ``float`` accepts ``10_2`` (= 102), but in
  a math answer ``10_2`` is a base-2 numeral. And two integers must be equal: the reference's
  relative tolerance 1e-4 accepts 7006653 for 7006652 (AIME answers, 0-999, are unaffected).
  ``qwen_numbers=True`` restores both of the reference's rules.
* An answer that is not boxed is used as given: the ``<answer>`` tag already delimits it (the
  reference falls back to the last number of the whole response).

These run inside collector threads, so nothing uses ``signal.alarm``; time is bounded by capping
the input length instead.
"""
from __future__ import annotations

import re
from math import isclose

MAX_ANSWER_CHARS = 512
_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

# Units stripped from answers (the reference's list, mainly from MathQA), with plurals.
_UNITS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie", "bc",
    "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq",
    "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet", "am", "pm", "hr",
    "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number", "kmph", "day",
    "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³", "hectare",
    "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter",
    "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface", "litre", "pi sq m", "s .", "metre",
    "meter", "inch",
]
_UNITS += [u + "s" for u in _UNITS]
_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _UNITS]


# -- extraction and normalisation (parser.py) --------------------------------------------------
def extract_boxed_answer(text: str) -> str:
    """``extract_answer``'s boxed branch: the last ``\\boxed{...}`` (braces balanced), else ``text``."""
    if "boxed" not in text:
        for trigger in ("he answer is", "final answer is"):
            if trigger in text:
                text = text.split(trigger)[-1].strip()
                break
        return _tidy(text)
    ans = text.split("boxed")[-1]
    if not ans:
        return ""
    if ans[0] == "{":
        depth, out = 1, []
        for c in ans[1:]:
            depth += {"{": 1, "}": -1}.get(c, 0)
            if depth == 0:
                break
            out.append(c)
        return _tidy("".join(out))
    return _tidy(ans.split("$")[0].strip())


def _tidy(pred: str) -> str:
    pred = re.sub(r"\n\s*", "", pred)
    if pred.startswith(":"):
        pred = pred[1:]
    if pred.endswith("."):
        pred = pred[:-1]
    if pred.endswith("/"):
        pred = pred[:-1]
    return pred


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr[:1] == "{":
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b, rest = substr[0], substr[1], substr[2:]
        new_str += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    a, b = parts
    try:
        a = a if "sqrt" in a else int(a)
        b = b if "sqrt" in b else int(b)
        assert string == f"{a}/{b}"
        return "\\frac{" + str(a) + "}{" + str(b) + "}"
    except (ValueError, AssertionError):
        return string


def _word_number(text: str) -> str:
    from word2number import w2n

    try:
        return str(w2n.word_to_num(text))
    except Exception:  # the reference ignores every failure here
        return text


def strip_string(string: str, skip_unit: bool = False) -> str:
    """The reference's answer normalisation, step for step (applied to prediction and gold)."""
    string = str(string).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    string = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", string)
    string = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", string).replace("bmatrix", "pmatrix")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    string = string.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    without_unit = re.sub(r"\\text{.*?}$", "", string).strip()
    if without_unit and without_unit != string:
        string = without_unit
    if not skip_unit:
        for _ in range(2):
            for unit in _UNIT_RES:
                stripped = unit.sub(r"\1\2", string)
                if stripped:
                    string = stripped
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    string = _word_number(string)
    string = re.sub(r"\\text\{(.*?)\}", r"\1", string)
    for key in ["x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"]:
        string = string.replace(key, "")
    string = string.replace("\\emptyset", r"{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    string = string.replace("\\%", "").replace("%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    string = string.replace("infinity", "\\infty")
    if "\\infty" not in string:
        string = string.replace("inf", "\\infty")
    string = string.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    string = re.sub(r"\\mbox{.*?}", "", string)
    if "j" in string and "i" not in string:
        string = string.replace("j", "i")
    string = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", string)
    string = re.sub(r"(\d+)\.0*$", r"\1", string)
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
        string = string.split("=")[1]
    string = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", string).replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(string))


def normalize_math_answer(text: str) -> str:
    """What the reference compares: the boxed content (if any), normalised (input capped)."""
    return strip_string(extract_boxed_answer(str(text)[:MAX_ANSWER_CHARS]))


# -- comparison (grader.py) -------------------------------------------------------------------
def parse_number(text: str, qwen_numbers: bool = False) -> float | None:
    """``parse_digits``: commas dropped, a trailing ``%`` divides by 100. Deliberate difference:
    a strict decimal / scientific regex instead of ``float()`` (which reads ``10_2`` as 102)."""
    s = str(text).replace(",", "").strip()
    for scale in (1.0, 0.01):
        if (qwen_numbers or _NUMBER_RE.fullmatch(s)) and s.isascii():
            try:
                return float(s) * scale
            except (ValueError, OverflowError):
                pass
        if not s.endswith("%"):
            return None
        s = s[:-1].removesuffix("\\")
    return None


def _choice_clean(pred: str) -> str:
    pred = pred.strip("\n").rstrip(".").rstrip("/").strip(" ").lstrip(":")
    letters = re.findall(r"\b(A|B|C|D|E)\b", pred.upper())
    pred = letters[-1] if letters else pred.strip().strip(".")
    return pred.rstrip(".").rstrip("/")


def _str_to_pmatrix(text: str) -> str:
    rows = [m.strip("{}") for m in re.findall(r"\{.*,.*\}", text.strip())]
    return ", ".join(r"\begin{pmatrix}" + m.replace(",", "\\") + r"\end{pmatrix}" for m in rows)


def math_equal(prediction: str | None, reference: str | None, include_percentage: bool = True,
               is_close: bool = True, normalize: bool = True, qwen_numbers: bool = False) -> bool:
    """True when ``prediction`` equals ``reference`` by the reference grader's rules.

    ``include_percentage`` and ``is_close`` are the reference's options (its defaults).
    ``normalize`` first extracts the boxed answer and applies ``strip_string`` to both sides, as
    the reference's pipeline does before calling its ``math_equal``. ``qwen_numbers`` reads
    numbers with ``float()`` and compares integers with the tolerance, as the reference does."""
    if prediction is None or reference is None:
        return False
    prediction, reference = str(prediction)[:MAX_ANSWER_CHARS], str(reference)[:MAX_ANSWER_CHARS]
    if normalize:
        prediction, reference = normalize_math_answer(prediction), strip_string(reference)
    return _equal(prediction, reference, include_percentage, is_close, qwen_numbers)


def _equal(prediction: str, reference: str, include_percentage: bool, is_close: bool, qwen_numbers: bool) -> bool:
    if prediction.strip().lower() == reference.strip().lower():
        return True
    if reference in ("A", "B", "C", "D", "E") and _choice_clean(prediction) == reference:
        return True
    pred_num, ref_num = parse_number(prediction, qwen_numbers), parse_number(reference, qwen_numbers)
    if pred_num is not None and ref_num is not None:
        golds = [ref_num / 100, ref_num, ref_num * 100] if include_percentage else [ref_num]
        exact = not is_close or (not qwen_numbers and pred_num.is_integer() and ref_num.is_integer())
        return any(g == pred_num if exact else isclose(g, pred_num, rel_tol=1e-4) for g in golds)
    if not prediction:
        return False
    reference, prediction = reference.strip(), prediction.strip()
    if "pmatrix" in prediction and "pmatrix" not in reference:
        reference = _str_to_pmatrix(reference)
    # [a, b] vs (a, b): brackets count only when both sides agree on the kind of interval.
    pred_str, ref_str = prediction, reference
    if ((prediction.startswith("[") and prediction.endswith("]") and not reference.startswith("("))
            or (prediction.startswith("(") and prediction.endswith(")") and not reference.startswith("["))):
        pred_str, ref_str = pred_str.strip("[]()"), ref_str.strip("[]()")
    for s in "{}()":
        ref_str, pred_str = ref_str.replace(s, ""), pred_str.replace(s, "")
    if pred_str.lower() == ref_str.lower():
        return True
    same = lambda a, b: _equal(a, b, include_percentage, is_close, qwen_numbers)  # noqa: E731
    if re.match(r"(\(|\[).+(\)|\])", prediction) and re.match(r"(\(|\[).+(\)|\])", reference):
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts) and all(same(p, r) for p, r in zip(pred_parts, ref_parts)):
            return True
    if _is_matrix(prediction) and _is_matrix(reference) and _matrices_equal(prediction, reference, same):
        return True
    if prediction.count("=") == 1 and reference.count("=") == 1:
        p, r = (f"{s.split('=')[0].strip()} - ({s.split('=')[1].strip()})" for s in (prediction, reference))
        if symbolic_equal(p, r) or symbolic_equal(f"-({p})", r):
            return True
    elif prediction.count("=") == 1 and len(prediction.split("=")[0].strip()) <= 2 and "=" not in reference:
        if same(prediction.split("=")[1], reference):
            return True
    elif reference.count("=") == 1 and len(reference.split("=")[0].strip()) <= 2 and "=" not in prediction:
        if same(prediction, reference.split("=")[1]):
            return True
    return symbolic_equal(prediction, reference)


def _is_matrix(s: str) -> bool:
    return s.startswith(("\\begin{pmatrix}", "\\begin{bmatrix}")) and s.endswith(("\\end{pmatrix}", "\\end{bmatrix}"))


def _matrices_equal(prediction: str, reference: str, same) -> bool:
    def rows(s: str) -> list[list[str]]:
        body = s[len("\\begin{pmatrix}"): -len("\\end{pmatrix}")]
        return [line.strip().split("&") for line in body.split("\\\\") if line.strip()]

    pred_rows, ref_rows = rows(prediction), rows(reference)
    return len(pred_rows) == len(ref_rows) and all(
        len(p) == len(r) and all(same(a, b) for a, b in zip(p, r)) for p, r in zip(pred_rows, ref_rows))


def symbolic_equal(a: str, b: str) -> bool:
    """Deliberate difference: math-verify parses both sides as LaTeX (never ``eval``) and checks
    equality symbolically and numerically, where the reference uses sympy's parsers."""
    from math_verify import parse, verify

    try:
        gold = parse(f"${b}$", parsing_timeout=None)
        pred = parse(f"${a}$", parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    except Exception:  # unparsable text is simply not equal
        return False
