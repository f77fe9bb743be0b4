"""Advantage estimators for outcome-reward RL over groups of rollouts (GRPO family).

Every estimator is a small pure function ``fn(rewards[B], group_ids[B], eps=...) -> adv[B]``
registered by name with :func:`register_advantage`; the trainer picks one with
:func:`compute_advantages`. Advantages are per-episode scalars; the trainer broadcasts each over
the episode's generated (action) tokens. Episodes that share a ``group_ids`` value are rollouts of
the same prompt. ReMax's baseline is not in the group: the trainer passes each episode's greedy
rollout reward as ``baselines``.

Also here: turn-level (process-reward) advantages, DAPO dynamic-sampling filter and DAPO soft
overlong penalty. Everything is torch-only, runs under ``no_grad`` and keeps no state.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[..., Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "register_advantage",
    "compute_advantages",
    "turn_level_advantages",
    "informative_groups",
    "soft_overlong_penalty",
]


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(rewards, group_ids, **kw) -> Tensor[B]`` under ``name``."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, **kw) -> Tensor:
    """Per-episode advantages ``Tensor[B]`` (float32, no grad) from the estimator ``name``.

    ``rewards``: ``Tensor[B]`` scalar episode rewards; ``group_ids``: ``Tensor[B]`` (long), equal ids
    mark rollouts of the same prompt. Extra keywords (e.g. ``eps``) go to the estimator.
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    rewards, group_ids = _check(rewards, group_ids)
    with torch.no_grad():
        return ADVANTAGE_ESTIMATORS[name](rewards, group_ids, **kw)


# ----------------------------------------------------------------------------- group statistics


def _check(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    rewards = torch.as_tensor(rewards).detach().float()
    group_ids = torch.as_tensor(group_ids, device=rewards.device).long()
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be [B]; got {tuple(rewards.shape)} and {tuple(group_ids.shape)}")
    return rewards, group_ids


def _group_stats(x: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-episode (group size n, group mean, unbiased group std) gathered back to ``[B]``.

    The std uses Bessel's correction (``/(n-1)``, like ``torch.std``); it is 0 for groups of one.
    """
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    n = torch.zeros(g, dtype=x.dtype, device=x.device).index_add_(0, inv, torch.ones_like(x))
    s = torch.zeros(g, dtype=x.dtype, device=x.device).index_add_(0, inv, x)
    mean = (s / n)[inv]
    ss = torch.zeros(g, dtype=x.dtype, device=x.device).index_add_(0, inv, (x - mean) ** 2)
    var = ss / (n - 1).clamp(min=1)
    return n[inv], mean, var.sqrt()[inv]


# ----------------------------------------------------------------------------- estimators


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, **_) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300):

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)

    ``std_g`` is the *unbiased* (Bessel-corrected, ``torch.std``) group std, as verl's
    ``compute_grpo_outcome_advantage`` and TRL's GRPOTrainer do. A group of one episode gets
    A = 0 (r - mean = 0; verl instead passes the raw reward through), and a group whose rewards are
    all equal gets A = 0 for every member.
    """
    _, mean, std = _group_stats(rewards, group_ids)
    return (rewards - mean) / (std + eps)


@register_advantage("drgrpo")
def drgrpo_advantage(rewards: Tensor, group_ids: Tensor, **_) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783):

        A_i = r_i - mean_g(r)

    i.e. GRPO without the std division (which up-weights too-easy/too-hard prompts). Pair it with
    the ``seq_mean_token_sum_norm`` loss aggregation to also drop the length normalisation.
    """
    _, mean, _ = _group_stats(rewards, group_ids)
    return rewards - mean


@register_advantage("rloo")
def rloo_advantage(rewards: Tensor, group_ids: Tensor, **_) -> Tensor:
    """RLOO, REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740):

        A_i = r_i - 1/(n-1) * sum_{j != i} r_j  =  n/(n-1) * (r_i - mean_g(r))

    over the n episodes of i's group. A group of one has no baseline and gets A = 0.
    """
    n, mean, _ = _group_stats(rewards, group_ids)
    return torch.where(n > 1, (rewards - mean) * n / (n - 1).clamp(min=1), torch.zeros_like(rewards))


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-8, token_counts: Tensor | None = None,
                           **_) -> Tensor:
    """REINFORCE++-baseline (Hu 2025, "REINFORCE++", arXiv:2501.03262), outcome-reward form, as
    verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage``:

        a_i = r_i - mean_g(r)        (group-mean baseline; a group of one has baseline 0)
        A_i = (a_i - mean(a)) / sqrt(var(a) + eps)     (whitened over the batch's trained tokens)

    ``token_counts[i]``: episode i's trained tokens. verl tiles a_i over its response tokens and
    whitens over all of them (``masked_whiten``: token-weighted mean, unbiased token variance);
    weighting each episode by its token count is exactly that. Without ``token_counts`` every
    episode weighs one. With ``group_size: 1`` (REINFORCE++'s usual setting) the baseline is thus
    the batch, not the episode itself (which would make every advantage 0).
    """
    n, mean, _ = _group_stats(rewards, group_ids)
    a = rewards - torch.where(n > 1, mean, torch.zeros_like(mean))
    w = torch.ones_like(a) if token_counts is None else torch.as_tensor(token_counts, dtype=a.dtype, device=a.device)
    total = w.sum()
    if total <= 1:
        return torch.zeros_like(a)
    mu = (w * a).sum() / total
    var = (w * (a - mu) ** 2).sum() / total * total / (total - 1)  # verl's masked_var(unbiased=True)
    return (a - mu) * torch.rsqrt(var + eps)


@register_advantage("remax")
def remax_advantage(rewards: Tensor, group_ids: Tensor, baselines: Tensor | None = None, **_) -> Tensor:
    """ReMax (Li et al. 2023, arXiv:2310.10505; verl's ``compute_remax_outcome_advantage``):

        A_i = r_i - b_i,     b_i = reward of the greedy (temperature 0) rollout of i's prompt

    broadcast over the episode's trained tokens, no std normalisation. ``baselines[i]``: the
    greedy reward of episode i's group, gathered to ``[B]`` by the trainer (one extra rollout per
    prompt, never trained on). Works with any group size, including ReMax's own setting of one.
    """
    if baselines is None:
        raise ValueError("advantage 'remax' needs baselines=Tensor[B]: the greedy rollout's reward for each episode's prompt")
    b = torch.as_tensor(baselines, device=rewards.device).detach().float()
    if b.shape != rewards.shape:
        raise ValueError(f"remax baselines must be [B] like rewards; got {tuple(b.shape)} and {tuple(rewards.shape)}")
    return rewards - b


# ----------------------------------------------------------------------------- turn-level


def _baseline_and_scale(returns: Tensor, group_ids: Tensor, estimator: str, eps: float) -> tuple[Tensor, Tensor]:
    """(b_i, s_i) with ``compute_advantages(estimator, returns) == (returns - b) * s``."""
    n, mean, std = _group_stats(returns, group_ids)
    if estimator == "grpo":
        return mean, 1.0 / (std + eps)
    if estimator == "drgrpo":
        return mean, torch.ones_like(mean)
    if estimator == "rloo":  # mean of the others; s = 0 for singleton groups
        others = (mean * n - returns) / (n - 1).clamp(min=1)
        return others, (n > 1).to(returns.dtype)
    if estimator == "reinforce_pp":  # episode-weighted whitening (turn-level returns have no single token count)
        base = torch.where(n > 1, mean, torch.zeros_like(mean))
        a = returns - base
        if a.numel() < 2:
            return returns, torch.zeros_like(returns)
        return base + a.mean(), torch.full_like(a, 1.0) * torch.rsqrt(a.var() + 1e-8)
    raise ValueError(f"turn_level_advantages: unsupported estimator {estimator!r}")


def turn_level_advantages(
    turn_rewards: list[list[float]],
    outcome_rewards: Tensor,
    group_ids: Tensor,
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> list[list[float]]:
    """Per-turn advantages from per-turn (process) rewards plus an outcome reward.

    Episode i has K_i turns with process rewards ``p_{i,0..K_i-1}`` and outcome reward ``R_i``.
    The (undiscounted) reward-to-go of turn k is

        G_{i,k} = sum_{j >= k} p_{i,j} + R_i          (G_{i,0} = the episode's total return)

    Baseline and scale come from the *group's episode returns* G_{.,0}, with the chosen estimator,
    and are applied to every turn of the episode:

        A_{i,k} = (G_{i,k} - b_i) * s_i
        grpo:   b_i = mean_g(G_0),  s_i = 1 / (std_g(G_0) + eps)   (unbiased std)
        drgrpo: b_i = mean_g(G_0),  s_i = 1
        rloo:   b_i = mean_{j != i in g}(G_{j,0}),  s_i = 1   (0 for a group of one)
        reinforce_pp: b_i = mean_g(G_0) (0 for a group of one) + the batch mean of the centred
                      values, s_i = 1/sqrt(var_B + 1e-8)

    So A_{i,0} equals ``compute_advantages(estimator, G_0, group_ids)`` exactly, and later turns
    differ from it only by the (scaled) process rewards already collected before them. With no
    process rewards every turn gets the episode's outcome advantage. (A per-turn-index
    normalisation was rejected: episodes have different numbers of turns, so turn-k groups would
    be ragged and tiny.) Episodes with no turns give ``[]``.
    """
    outcome_rewards, group_ids = _check(outcome_rewards, group_ids)
    if len(turn_rewards) != outcome_rewards.numel():
        raise ValueError(f"{len(turn_rewards)} turn-reward lists for {outcome_rewards.numel()} episodes")
    with torch.no_grad():
        # reward-to-go per turn (python floats: lists are ragged and short)
        rtg: list[list[float]] = []
        for p, r in zip(turn_rewards, outcome_rewards.tolist()):
            acc, out = r, []
            for x in reversed(p):
                acc += float(x)
                out.append(acc)
            rtg.append(out[::-1])
        g0 = torch.tensor([g[0] if g else r for g, r in zip(rtg, outcome_rewards.tolist())], dtype=torch.float32)
        b, s = _baseline_and_scale(g0, group_ids.cpu(), estimator, eps)
        return [[(g - bi) * si for g in gs] for gs, bi, si in zip(rtg, b.tolist(), s.tolist())]


# ----------------------------------------------------------------------------- DAPO helpers


def informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476): keep groups with 0 < acc < 1.

    Returns ``BoolTensor[B]``: False for every episode of a group whose rewards are all equal
    (including groups of one), since such a group has zero GRPO advantage and no gradient.
    """
    rewards, group_ids = _check(rewards, group_ids)
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    hi = torch.full((g,), -float("inf"), device=rewards.device).scatter_reduce(0, inv, rewards, "amax")
    lo = torch.full((g,), float("inf"), device=rewards.device).scatter_reduce(0, inv, rewards, "amin")
    return (hi > lo)[inv]


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13), scaled by ``penalty``:

        R(L) = 0                                   if L <= L_max - L_cache
             = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
             = -1                                  if L > L_max

    times ``penalty``; added to the episode reward. ``lengths``: generated-token counts ``[B]``.
    """
    L = torch.as_tensor(lengths).float()
    start = float(max_len - cache_len)
    ramp = (start - L) / max(cache_len, 1)
    r = torch.where(L <= start, torch.zeros_like(L), torch.where(L <= max_len, ramp, torch.full_like(L, -1.0)))
    return r * penalty
