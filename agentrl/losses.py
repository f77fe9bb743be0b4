"""Token-level losses for GRPO-family policy optimisation: log-probs, entropy, clipped policy
loss, KL estimators and loss aggregation.

Conventions: all token tensors are ``[B, T]`` and aligned with ``input_ids`` (see
:func:`token_logprobs`); ``mask`` is ``[B, T]`` (bool or 0/1) and is 1 exactly on the tokens the
policy generated and is trained on (not prompt, tool-observation or padding tokens). Tokens with
mask 0 never contribute to a loss, its gradient or a metric. KL estimators and aggregations are
registries of small pure functions chosen by name, like the advantage estimators.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "token_logprobs",
    "entropy_from_logits",
    "policy_loss",
    "KL_ESTIMATORS",
    "register_kl",
    "kl_penalty",
    "AGGREGATIONS",
    "register_aggregation",
    "aggregate",
    "aggregation_count",
    "grpo_loss",
    "positive_nll",
]


# ----------------------------------------------------------------------------- log-probs, entropy


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each input token under the model, aligned with ``input_ids``.

        out[b, t] = log_softmax(logits[b, t-1] / temperature)[input_ids[b, t]]   for t >= 1
        out[b, 0] = 0                                                           (no context)

    ``logits``: ``[B, T, V]`` from a causal LM run on ``input_ids`` ``[B, T]``; returns float32
    ``[B, T]``, so a loss mask over ``input_ids`` applies directly. Computed as
    ``z[y] - logsumexp(z)`` one sequence at a time, so no full ``[B, T, V]`` log-softmax (or
    float32 copy of bf16 logits) is ever materialised. Use the sampling temperature so that
    the ratio is taken against the distribution that actually generated the tokens.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(f"logits [B,T,V] and input_ids [B,T] expected; got {tuple(logits.shape)}, {tuple(input_ids.shape)}")
    B, T, _ = logits.shape
    rows = []
    for b in range(B):
        z = logits[b, :-1].float()
        if temperature != 1.0:
            z = z / temperature
        tgt = input_ids[b, 1:].long().unsqueeze(-1)
        rows.append(z.gather(-1, tgt).squeeze(-1) - torch.logsumexp(z, dim=-1))
    out = torch.stack(rows) if rows else logits.new_zeros((0, max(T - 1, 0)), dtype=torch.float32)
    return torch.nn.functional.pad(out, (1, 0), value=0.0)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position, ``[B, T, V] -> [B, T]`` (float32).

        H = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v

    (the same identity verl uses). Entry ``[b, t]`` is the entropy of the prediction *for* token
    t+1; shift it like :func:`token_logprobs` if it is to be masked with the same mask.
    """
    rows = []
    for b in range(logits.shape[0]):
        z = logits[b].float()
        rows.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:2], dtype=torch.float32)


# ----------------------------------------------------------------------------- masked helpers


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum() / m.sum().clamp(min=1)


def _f(x: Tensor | float) -> float:
    return float(x.detach().item()) if isinstance(x, Tensor) else float(x)


# ----------------------------------------------------------------------------- policy loss


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate per token (Schulman et al. 2017, arXiv:1707.06347), to *minimise*:

        rho  = exp(logp - logp_old)                      (log-ratio clamped to [-20, 20])
        L    = max(-A * rho, -A * clip(rho, 1 - clip_low, 1 + clip_high))
        L    = min(L, -A * c)   where A < 0, if dual_clip = c > 1

    ``clip_high > clip_low`` is DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476, e.g. 0.28);
    dual clip bounds the loss of negative-advantage tokens whose ratio blew up (Ye et al. 2020,
    arXiv:1912.09729). ``advantages`` is ``[B]`` (broadcast over tokens) or ``[B, T]``.
    ``is_weights`` ``[B, T]`` (detached) multiplies each token's loss: the truncated importance
    weights pi_old / pi_rollout that correct a rollout engine's mismatch (verl's
    ``rollout_is_weights``, applied the same way: ``pg_losses * rollout_is_weights``).

    Returns ``(loss_mat [B, T], metrics)``; ``loss_mat`` is exactly 0 where ``mask`` is 0, and the
    metrics (floats, masked tokens only) are ``clip_frac_low`` (A<0 and rho<1-clip_low),
    ``clip_frac_high`` (A>0 and rho>1+clip_high), ``clip_frac`` (their sum: tokens whose
    gradient the clip removed), ``dual_clip_frac`` (A<0 and rho>c), ``ratio_mean/max/min`` and
    ``approx_kl`` (mean of logp_old - logp).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.detach().to(logprobs.dtype).expand_as(logprobs)
    keep = mask.bool()
    log_ratio = torch.clamp(logprobs - old_logprobs.detach(), -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss1, loss2)
    neg = advantages < 0
    dual = torch.zeros_like(keep)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss3 = -advantages * dual_clip
        loss = torch.where(neg, torch.minimum(loss, loss3), loss)
        dual = neg & (ratio > dual_clip)
    if is_weights is not None:
        loss = loss * is_weights.detach().to(loss.dtype)
    loss = torch.where(keep, loss, torch.zeros_like(loss))

    with torch.no_grad():
        low = neg & (ratio < 1.0 - clip_low)
        high = (advantages > 0) & (ratio > 1.0 + clip_high)
        r = ratio[keep]
        metrics = {
            "clip_frac_low": _f(_masked_mean(low.float(), keep)),
            "clip_frac_high": _f(_masked_mean(high.float(), keep)),
            "clip_frac": _f(_masked_mean((low | high).float(), keep)),
            "dual_clip_frac": _f(_masked_mean(dual.float(), keep)),
            "ratio_mean": _f(r.mean()) if r.numel() else 1.0,
            "ratio_max": _f(r.max()) if r.numel() else 1.0,
            "ratio_min": _f(r.min()) if r.numel() else 1.0,
            "approx_kl": _f(_masked_mean(-log_ratio, keep)),
        }
    return loss, metrics


# ----------------------------------------------------------------------------- KL estimators

KLFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: dict[str, KLFn] = {}


def register_kl(*names: str) -> Callable[[KLFn], KLFn]:
    """Decorator: register ``fn(logprobs, ref_logprobs) -> Tensor[B, T]`` under each name."""

    def deco(fn: KLFn) -> KLFn:
        for n in names:
            KL_ESTIMATORS[n] = fn
        return fn

    return deco


@register_kl("k1", "kl")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref) with y ~ pi, high variance,
    can be negative (Schulman 2020, http://joschu.net/blog/kl-approx.html)."""
    return logprobs - ref_logprobs


@register_kl("k2", "mse")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 1/2 (log pi(y) - log pi_ref(y))^2: biased, low variance, >= 0 (Schulman 2020)."""
    return 0.5 * (logprobs - ref_logprobs).square()


@register_kl("k3", "low_var_kl")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref(y) - log pi(y): unbiased, low variance, >= 0
    (Schulman 2020; the KL term of GRPO, arXiv:2402.03300).

    As verl's ``low_var_kl``: d is clamped to [-20, 20] and the result to [-10, 10] for numerical
    stability, so tokens with k3 > 10 get no KL gradient.
    """
    d = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate ``[B, T]`` between the policy and the reference, by estimator name
    (``k1``/``kl``, ``k2``/``mse``, ``k3``/``low_var_kl``)."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs.detach())


# ----------------------------------------------------------------------------- aggregation

AggFn = Callable[..., tuple[Tensor, Tensor]]
AGGREGATIONS: dict[str, AggFn] = {}


def register_aggregation(name: str) -> Callable[[AggFn], AggFn]:
    """Decorator: register ``fn(loss_mat, mask, max_len=None) -> (total, count)`` under ``name``.

    An aggregation is a ratio ``total / count`` whose numerator and denominator are both sums
    over sequences. Kept apart, they let the trainer split a minibatch into micro-batches (and
    data-parallel ranks) and still divide every micro-batch's ``total`` by the *minibatch's*
    ``count``, so the accumulated gradient does not depend on the micro-batch size."""

    def deco(fn: AggFn) -> AggFn:
        AGGREGATIONS[name] = fn
        return fn

    return deco


def _masked(loss_mat: Tensor, mask: Tensor) -> Tensor:
    # torch.where (not a product with the mask): masked tokens get exactly zero gradient even if
    # their loss value is inf/nan.
    return torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat))


@register_aggregation("token_mean")
def agg_token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """DAPO token-level loss (arXiv:2503.14476): sum_{i,t} m_it l_it / sum_{i,t} m_it.
    Every trained token in the batch weighs the same, whatever its sequence's length."""
    return _masked(loss_mat, mask).sum(), mask.to(loss_mat.dtype).sum()


@register_aggregation("seq_mean_token_mean")
def agg_seq_mean_token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Original GRPO (arXiv:2402.03300): 1/G sum_i (1/|o_i|) sum_t m_it l_it.
    Sequences without any trained token (e.g. truncated ones under ``overlong: mask``) are left
    out of the mean over sequences: ``count`` is the number of sequences with a trained token."""
    n = mask.to(loss_mat.dtype).sum(-1)
    seq = _masked(loss_mat, mask).sum(-1) / n.clamp(min=1)
    return seq.sum(), (n > 0).to(loss_mat.dtype).sum()


@register_aggregation("seq_mean_token_sum_norm")
def agg_seq_mean_token_sum_norm(loss_mat: Tensor, mask: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Dr. GRPO (arXiv:2503.20783): 1/B sum_i (sum_t m_it l_it) / max_len with a *constant*
    max_len (default: T = ``loss_mat.shape[-1]``), removing GRPO's per-sequence length bias.
    (verl's mode of this name divides the batch sum by max_len, i.e. B times this value.)"""
    norm = float(max_len if max_len is not None else loss_mat.shape[-1])
    return (_masked(loss_mat, mask).sum(-1) / norm).sum(), loss_mat.new_tensor(float(loss_mat.shape[0]))


def aggregation_count(name: str, mask: Tensor) -> float:
    """The denominator ``aggregate(name, ., mask)`` divides by (it depends on the mask only)."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {name!r}; known: {sorted(AGGREGATIONS)}")
    return float(AGGREGATIONS[name](torch.zeros(mask.shape), mask)[1])


def aggregate(name: str, loss_mat: Tensor, mask: Tensor, max_len: int | None = None,
              normalizer: float | None = None) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar with the aggregation ``name``; tokens with
    mask 0 contribute exactly zero (value and gradient). ``normalizer`` replaces the batch's own
    denominator (the minibatch's, when this batch is one micro-batch of it)."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {name!r}; known: {sorted(AGGREGATIONS)}")
    total, count = AGGREGATIONS[name](loss_mat, mask, max_len=max_len)
    return total / (count.clamp(min=1) if normalizer is None else max(float(normalizer), 1.0))


def positive_nll(logprobs: Tensor, mask: Tensor, normalizer: float | None = None) -> Tensor:
    """VAPO's positive-example LM loss (Yue et al. 2025, arXiv:2504.05118, eq. 9): the token-mean
    negative log-likelihood ``-sum_{i in T, t} m_it log pi(o_it) / N`` over ``mask`` = the action
    tokens of positive-reward episodes (T), N their count (``normalizer``: the minibatch's, when
    this is one micro-batch of it). Tokens off the mask contribute exactly zero."""
    total = -torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)).sum()
    count = float(mask.bool().sum()) if normalizer is None else float(normalizer)
    return total / max(count, 1.0)


# ----------------------------------------------------------------------------- composed loss


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    ref_logprobs: Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    aggregation: str = "token_mean",
    max_len: int | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    normalizer: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The GRPO objective for one (micro-)batch, to minimise:

        loss = agg(L_clip) + kl_coef * agg(KL_kind(pi || pi_ref)) - entropy_coef * agg(H)

    with ``L_clip`` from :func:`policy_loss`, the KL from :func:`kl_penalty` (GRPO puts the KL in
    the loss, not the reward) and ``agg`` = ``aggregate(aggregation, ., mask, max_len)``.

    ``logprobs`` ``[B, T]`` carries the gradient; ``old_logprobs`` are the behaviour policy's
    (``None`` = on-policy, i.e. ``logprobs.detach()``: ratio 1, the plain policy gradient);
    ``ref_logprobs`` is only needed when ``kl_coef != 0`` (if given with ``kl_coef == 0`` the KL
    is still reported). ``entropy`` ``[B, T]`` (e.g. from :func:`entropy_from_logits`, aligned
    with the mask) is reported, and enters the loss when ``entropy_coef != 0``: it must then carry
    the gradient (not be detached), or the bonus changes only the logged loss.
    ``normalizer``: the aggregation's denominator over the whole minibatch when this call sees
    one micro-batch of it (see :func:`aggregation_count`); ``is_weights``: see :func:`policy_loss`.

    Returns ``(scalar loss, metrics)`` with float metrics ``loss``, ``pg_loss``, ``kl``
    (if computed), ``entropy`` (if given) and those of :func:`policy_loss`.
    """
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    pg_mat, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, dual_clip, is_weights)
    pg = aggregate(aggregation, pg_mat, mask, max_len, normalizer)
    loss = pg
    metrics = {"pg_loss": _f(pg), **metrics}
    if kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if ref_logprobs is not None:
        kl = aggregate(aggregation, kl_penalty(logprobs, ref_logprobs, kl_kind), mask, max_len, normalizer)
        metrics["kl"] = _f(kl)
        if kl_coef != 0.0:
            loss = loss + kl_coef * kl
    if entropy is not None:
        ent = aggregate(aggregation, entropy, mask, max_len, normalizer)
        metrics["entropy"] = _f(ent)
        if entropy_coef != 0.0:
            loss = loss - entropy_coef * ent
    metrics["loss"] = _f(loss)
    return loss, metrics
