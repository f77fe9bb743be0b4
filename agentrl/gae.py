"""Token-level GAE over the policy's own tokens (``algorithm.advantage: gae``), VAPO's decoupled and
length-adaptive lambdas, and where an episode's rewards sit on its tokens.

The MDP: each sampled token (loss mask 1) is one action; its state is the sequence before it. A
tool-observation span (loss mask 0 inside the sequence) is the environment's transition between
two actions, never a step of its own, so the TD error of the last action before an observation
bootstraps from the value of the first action after it, and gamma / lambda apply once per action:

    t_1 < ... < t_n   the action positions of an episode (loss mask 1, in order)
    delta_k = r_k + gamma * V_{k+1} - V_k         (V_{n+1} = 0: the episode ends after t_n)
    A_k     = sum_{j >= k} (gamma * lambda)^(j-k) * delta_j
    R_k     = A_k + V_k                           (the critic's target)

That is verl's ``compute_gae_advantage_return`` (volcengine/verl, verl/trainer/ppo/core_algos.py,
"skip values and TD-error on observation tokens"); the recursion here is the same masked loop.
``values[b, t]`` is V of the state before token t (the critic's output at position t - 1, aligned
like the log-probs: verl's ``values[:, -response_length - 1 : -1]`` in dp_critic.py).

VAPO (Yue et al. 2025, arXiv:2504.05118, after VC-PPO arXiv:2503.01491): the critic's targets use
lambda_critic = 1.0 (Monte-Carlo returns: no bias from an untrained critic), the policy's
advantages lambda_policy = 1 - 1 / (alpha * l) with l the episode's action-token count (alpha =
0.05), so that 1 / (1 - lambda) = alpha * l: the horizon the GAE sum averages over grows with the
response. Everything here is torch-only, no grad, no state.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gae_advantages_returns", "length_adaptive_lambda", "token_rewards", "masked_whiten"]


def gae_advantages_returns(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                           lam: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
    """``(advantages [B, T], returns [B, T])``, 0 off the mask, by the recursion in the module
    docstring. ``lam``: a float, or ``Tensor[B]`` (one lambda per episode, e.g. length-adaptive).
    ``token_rewards`` off the mask are ignored (rewards belong on action tokens: :func:`token_rewards`)."""
    if not (token_rewards.shape == values.shape == mask.shape) or token_rewards.dim() != 2:
        raise ValueError(f"token_rewards, values and mask must all be [B, T]; got {tuple(token_rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    with torch.no_grad():
        r, v, m = token_rewards.float(), values.float(), mask.float()
        lam_b = torch.as_tensor(lam, dtype=torch.float32, device=r.device).expand(r.shape[0])
        next_value = torch.zeros(r.shape[0], device=r.device)
        last_gae = torch.zeros(r.shape[0], device=r.device)
        out = torch.zeros_like(r)
        for t in reversed(range(r.shape[1])):
            delta = r[:, t] + gamma * next_value - v[:, t]
            gae = delta + gamma * lam_b * last_gae
            # an observation token (mask 0) is not a step: carry the next action's value and GAE across it
            next_value = torch.where(m[:, t] > 0, v[:, t], next_value)
            last_gae = torch.where(m[:, t] > 0, gae, last_gae)
            out[:, t] = gae
        advantages = out * m
        return advantages, (advantages + v) * m


def length_adaptive_lambda(mask: Tensor, alpha: float = 0.05) -> Tensor:
    """VAPO's ``lambda_policy = 1 - 1 / (alpha * l)`` per episode, ``Tensor[B]``; ``l`` = the episode's
    action tokens (loss-mask sum). Clamped to [0, 1]: below l = 1 / alpha (20 tokens at 0.05) the
    formula goes negative, which is no lambda; the paper's responses are thousands of tokens long."""
    if alpha <= 0:
        raise ValueError(f"length-adaptive lambda needs alpha > 0, got {alpha}")
    lengths = mask.float().sum(-1)
    lam = 1.0 - 1.0 / (alpha * lengths.clamp(min=1e-6))
    return lam.clamp(0.0, 1.0)


def token_rewards(mask: Tensor, episode_rewards: Tensor, turn_spans: list[list[tuple[int, int]]] | None = None,
                  turn_rewards: list[list[float]] | None = None) -> Tensor:
    """Rewards ``[B, T]`` on action tokens: each turn's reward at that turn's last action token, the
    rest of the episode's reward (``episode_rewards[i] - sum(turn_rewards[i])``: the outcome, plus any
    shaping) at the episode's last action token. The row sums equal ``episode_rewards``, except for an
    episode without any action token (e.g. masked as truncated), whose row is all zero."""
    B = mask.shape[0]
    out = torch.zeros(mask.shape, dtype=torch.float32)
    turn_spans = turn_spans or [[] for _ in range(B)]
    turn_rewards = turn_rewards or [[] for _ in range(B)]
    for i in range(B):
        actions = mask[i].nonzero().flatten().tolist()
        if not actions:
            continue
        outcome = float(episode_rewards[i]) - sum(float(x) for x in turn_rewards[i])
        for (start, end), reward in zip(turn_spans[i], turn_rewards[i]):
            inside = [t for t in actions if start <= t < end]
            if inside and reward:
                out[i, inside[-1]] += float(reward)
            elif reward:  # a turn with no trained token (truncated away): its reward joins the outcome
                outcome += float(reward)
        out[i, actions[-1]] += outcome
    return out


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """verl's ``masked_whiten`` (verl/utils/torch_functional.py): (x - mean) / sqrt(var + eps) over the
    masked entries, unbiased variance; 0 off the mask. Fewer than two masked entries: centred only."""
    keep = mask.bool()
    n = int(keep.sum())
    if n == 0:
        return torch.zeros_like(x)
    mean = x[keep].mean()
    if n < 2:
        return torch.where(keep, x - mean, 0.0)
    var = x[keep].var(unbiased=True)
    return torch.where(keep, (x - mean) * torch.rsqrt(var + eps), 0.0)
