"""Label-free rewards: the group's majority answer is the pseudo-label (TTRL, self-consistency).

TTRL (Zuo et al. 2025, arXiv:2504.16084; PRIME-RL/TTRL ``verl/trainer/ppo/ttrl_utils.py``)
samples a group of answers per prompt, takes the most frequent one as the label, and rewards
each sample by whether it agrees with that label. Here:

* Answers are pooled into equivalence classes. Math: ``normalize_math_answer`` then the
  Qwen2.5-Math grader (``math_equal``), so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one class; QA:
  equal after SQuAD normalisation (``normalize_answer``). An answer joins the first class whose
  first member it equals (the grader is not transitive: comparing with the class's first answer
  keeps the result independent of the order later members arrived in).
* The label is the largest class; a tie goes to the class whose first member came first in the
  group (as ``Counter.most_common`` in TTRL and maj@k in ``agentrl.eval.metrics``).
* Episodes without an answer do not vote and get reward 0; a group with no answer has no label.
* ``majority_ratio``: size of the majority class / group size (unanswered episodes included), as
  TTRL reports it.

:func:`apply_majority_vote` rewrites the trajectories' rewards in place: the env's correctness
component (``component``, e.g. PythonTool's ``correct``) is replaced by the pseudo-label reward;
the gold value, where the task has one, is kept as ``_gold_<component>`` (reported, not summed).
Format and per-turn tool rewards stay as the env gave them. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from agentrl.math_grader import math_equal, normalize_math_answer
from agentrl.rewards import exact_match, normalize_answer
from agentrl.types import StopReason, Trajectory

Kind = Literal["math", "qa"]
__all__ = ["Vote", "answer_classes", "majority_vote", "agrees_with_gold", "final_answer", "gold_of",
           "apply_majority_vote", "ttrl_metrics"]


@dataclass(frozen=True)
class Vote:
    label: str | None
    """The majority class's first answer (None: nobody in the group answered)."""
    members: frozenset[int]
    """Indices (within the group) of the episodes whose answer is in the majority class."""
    ratio: float
    """len(members) / group size, unanswered episodes counted in the group size."""


def _key(answer: str, kind: Kind) -> str:
    return normalize_math_answer(answer) if kind == "math" else normalize_answer(answer)


def answer_classes(answers: Sequence[str | None], kind: Kind, include_percentage: bool = False) -> list[list[int]]:
    """Indices of ``answers`` grouped into equivalence classes, classes in order of first appearance.

    ``None`` answers belong to no class. ``include_percentage`` is the math grader's option of that
    name (``50`` equals ``0.5``): off for voting, since it would pool ``12`` with ``1200``; maj@k in
    ``agentrl.eval.metrics`` keeps the grader's default (on)."""
    classes: list[list[int]] = []
    keys: list[str] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        key = _key(answer, kind)
        for members, first in zip(classes, keys):
            if key == first or (kind == "math" and math_equal(key, first, include_percentage=include_percentage,
                                                                normalize=False)):
                members.append(i)
                break
        else:
            classes.append([i])
            keys.append(key)
    return classes


def majority_vote(answers: Sequence[str | None], kind: Kind) -> Vote:
    """The group's pseudo-label: its largest answer class (ties: the class seen first)."""
    classes = answer_classes(answers, kind)
    if not classes:
        return Vote(None, frozenset(), 0.0)
    best = max(classes, key=len)  # max keeps the first of equally large classes
    return Vote(answers[best[0]], frozenset(best), len(best) / len(answers))


def agrees_with_gold(answer: str | None, gold: Any, kind: Kind) -> bool:
    """Is ``answer`` correct against the gold (math: the grader; QA: EM against any gold)?"""
    if answer is None or gold is None:
        return False
    if kind == "math":
        return math_equal(answer, str(gold))
    return bool(exact_match(answer, [gold] if isinstance(gold, str) else list(gold)))


def same_class(answer: str | None, label: str | None, kind: Kind) -> bool:
    """Would ``answer`` join the class whose first member is ``label`` (for episodes outside the vote)?"""
    if answer is None or label is None:
        return False
    a, b = _key(answer, kind), _key(label, kind)
    return a == b or (kind == "math" and math_equal(a, b, include_percentage=False, normalize=False))


def final_answer(t: Trajectory) -> str | None:
    """The episode's final answer as the env parsed it (None: it ended without one)."""
    return t.turns[-1].info.get("answer") if t.turns else None


def gold_of(task: dict, kind: Kind) -> Any:
    """The task's gold: ``answer`` for math, ``answers`` (or ``answer``) for QA; None when absent."""
    if kind == "qa":
        return task.get("answers", task.get("answer"))
    return task.get("answer")


def apply_majority_vote(trajs: Sequence[Trajectory], tasks: Sequence[dict], kind: Kind, component: str,
                        greedy: Sequence[Trajectory] = ()) -> dict[str, float]:
    """Replace each episode's ``component`` reward by its pseudo-label reward, per group, in place.

    ``tasks[g]`` is the task of group id ``g`` (the trajectories' ``group_id``). ``greedy``
    (ReMax baselines, one per group, not trained on and not voting) are scored against their
    group's label the same way. Returns additive sums for :func:`ttrl_metrics` (sum them over
    ranks and steps before dividing)."""
    sums = {"groups": 0.0, "ratio": 0.0, "gold_groups": 0.0, "label_correct": 0.0, "gold_episodes": 0.0,
            "agree": 0.0, "gold_reward": 0.0}
    groups: dict[int, list[Trajectory]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    greedy_by_group = {t.group_id: t for t in greedy}
    for g, members in groups.items():
        gold = gold_of(tasks[g], kind)
        answers = [final_answer(t) for t in members]
        vote = majority_vote(answers, kind)
        sums["groups"] += 1
        sums["ratio"] += vote.ratio
        if gold is not None:
            sums["gold_groups"] += 1
            sums["label_correct"] += float(agrees_with_gold(vote.label, gold, kind))
        for i, t in enumerate(members):
            pseudo = float(i in vote.members)
            gold_reward = _replace_component(t, component, pseudo, gold)
            if gold_reward is not None:
                sums["gold_episodes"] += 1
                sums["gold_reward"] += gold_reward
                sums["agree"] += float(pseudo == gold_reward)
        if g in greedy_by_group:
            b = greedy_by_group[g]
            _replace_component(b, component, float(same_class(final_answer(b), vote.label, kind)), gold)
    return sums


def _replace_component(t: Trajectory, component: str, pseudo: float, gold: Any) -> float | None:
    """Swap the env's gold-scored ``component`` for ``pseudo`` in ``t.reward``; the gold value (None
    when the task has no gold) moves to ``_gold_<component>``."""
    if gold is None or (component not in t.reward_components and t.stop_reason == StopReason.ERROR):
        # no gold, or an episode an infrastructure error ended before the env scored it
        old = t.reward_components.pop(component, 0.0)
        gold_value = None
    else:
        if component not in t.reward_components:
            raise ValueError(f"reward.replaces={component!r}, but the env's reward components are "
                             f"{sorted(t.reward_components)}: set reward.replaces to the env's correctness component")
        old = gold_value = float(t.reward_components.pop(component))
        t.reward_components[f"_gold_{component}"] = gold_value
    t.reward_components[component] = pseudo
    t.reward = t.reward - old + pseudo
    return gold_value


def ttrl_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``ttrl/...`` metrics from :func:`apply_majority_vote`'s sums: ``majority_ratio`` (mean
    over groups), and where gold exists ``label_accuracy`` (pseudo-label = gold, over groups),
    ``reward_vs_gold_agreement`` (pseudo reward = gold reward, over episodes; TTRL's
    ``reward_accuracy``) and ``gold_reward_mean`` (the accuracy the pseudo reward stands in for)."""
    out = {"ttrl/majority_ratio": sums["ratio"] / max(sums["groups"], 1.0), "ttrl/gold_groups": sums["gold_groups"]}
    if sums["gold_groups"]:
        out["ttrl/label_accuracy"] = sums["label_correct"] / sums["gold_groups"]
    if sums["gold_episodes"]:
        out["ttrl/reward_vs_gold_agreement"] = sums["agree"] / sums["gold_episodes"]
        out["ttrl/gold_reward_mean"] = sums["gold_reward"] / sums["gold_episodes"]
    return out
