import math

import pytest
import torch

from agentrl.losses import (
    AGGREGATIONS,
    aggregate,
    entropy_from_logits,
    grpo_loss,
    kl_penalty,
    policy_loss,
    token_logprobs,
)


def one_token(ratio, adv, **kw):
    """Loss and d loss / d logprob for a single token with old logprob 0."""
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, m = policy_loss(lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.sum().backward()
    return loss.item(), lp.grad.item(), m


def test_unclipped_token_gradient_is_minus_adv_times_ratio():
    loss, grad, _ = one_token(1.1, 1.0)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1)
    loss, grad, _ = one_token(1.5, -1.0)  # negative adv, ratio up: PPO does not clip this side
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)


def test_positive_adv_clipped_above_one_plus_clip_high():
    loss, grad, m = one_token(1.5, 1.0)
    assert loss == pytest.approx(-1.2) and grad == 0.0
    assert m["clip_frac_high"] == 1.0 and m["clip_frac_low"] == 0.0


def test_negative_adv_clipped_below_one_minus_clip_low():
    loss, grad, m = one_token(0.5, -1.0)
    assert loss == pytest.approx(0.8) and grad == 0.0
    assert m["clip_frac_low"] == 1.0 and m["clip_frac_high"] == 0.0


def test_asymmetric_clip_higher():
    _, grad, _ = one_token(1.25, 1.0, clip_high=0.2)
    assert grad == 0.0
    loss, grad, _ = one_token(1.25, 1.0, clip_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    # clip_low untouched by clip_high: ratio .75 with A<0 still clipped at .8
    loss, grad, _ = one_token(0.75, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0


def test_dual_clip_bounds_negative_advantage_loss():
    loss, grad, m = one_token(4.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0) and grad == 0.0 and m["dual_clip_frac"] == 1.0
    loss, grad, _ = one_token(2.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(2.0) and grad == pytest.approx(2.0)
    loss, _, _ = one_token(4.0, -1.0)  # no dual clip
    assert loss == pytest.approx(4.0)
    loss, _, _ = one_token(4.0, 1.0, dual_clip=3.0)  # positive adv unaffected
    assert loss == pytest.approx(-1.2)
    with pytest.raises(ValueError):
        one_token(1.0, 1.0, dual_clip=0.5)


def test_clip_fractions_and_ratio_stats_masked_only():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 4.0, 10.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    _, m = policy_loss(ratios.log(), torch.zeros(1, 5), adv, mask, dual_clip=3.0)
    assert m["clip_frac_high"] == pytest.approx(0.25)
    assert m["clip_frac_low"] == pytest.approx(0.25)
    assert m["clip_frac"] == pytest.approx(0.5)
    assert m["dual_clip_frac"] == pytest.approx(0.25)
    assert m["ratio_max"] == pytest.approx(4.0) and m["ratio_min"] == pytest.approx(0.5)
    assert m["ratio_mean"] == pytest.approx(7.0 / 4)


def test_advantages_b_and_bt_agree():
    lp = torch.randn(2, 3) * 0.1
    adv = torch.tensor([1.0, -2.0])
    mask = torch.ones(2, 3)
    a, _ = policy_loss(lp, torch.zeros(2, 3), adv, mask)
    b, _ = policy_loss(lp, torch.zeros(2, 3), adv[:, None].expand(2, 3), mask)
    assert torch.equal(a, b)


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_aggregations_by_hand():
    assert set(AGGREGATIONS) >= {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"}
    assert aggregate("token_mean", LOSS, MASK).item() == pytest.approx(7 / 3)  # (1+2+4)/3
    assert aggregate("seq_mean_token_mean", LOSS, MASK).item() == pytest.approx(2.75)  # (1.5+4)/2
    assert aggregate("seq_mean_token_sum_norm", LOSS, MASK).item() == pytest.approx(7 / 6)  # (3/3+4/3)/2
    assert aggregate("seq_mean_token_sum_norm", LOSS, MASK, max_len=4).item() == pytest.approx(0.875)
    with pytest.raises(ValueError):
        aggregate("nope", LOSS, MASK)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_masked_tokens_get_exactly_zero_gradient(agg):
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])
    lp = (torch.randn(2, 4) * 0.1 - 1).requires_grad_()
    old = torch.randn(2, 4) * 0.1 - 1
    old[mask == 0] = -float("inf")  # garbage at masked positions must not leak
    ref = torch.randn(2, 4) * 0.1 - 1
    ref[mask == 0] = float("nan")
    ent = torch.rand(2, 4, requires_grad=True)
    loss, _ = grpo_loss(lp, old, torch.tensor([1.0, -0.5]), mask, ref, kl_coef=0.1, aggregation=agg,
                        entropy=ent, entropy_coef=0.01)
    loss.backward()
    assert torch.isfinite(loss)
    assert (lp.grad[mask == 0] == 0).all() and (lp.grad[mask == 1] != 0).all()
    assert (ent.grad[mask == 0] == 0).all() and (ent.grad[mask == 1] != 0).all()


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    # k3: d = ref - lp = -log 2; exp(d) - d - 1 = 0.5 + log 2 - 1
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.log(2) - 0.5)
    assert kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(math.log(2) - 0.5)
    assert kl_penalty(lp, lp, "k3").item() == 0.0
    assert kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-100.0]]), "k3").item() == 10.0  # verl clamp
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "k9")


def test_grpo_loss_kl_coef_zero_without_ref():
    lp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, m = grpo_loss(lp, None, adv, mask, None, kl_coef=0.0)
    # on-policy: ratio 1, token_mean of -A over 4 tokens = -(3 - 1)/4
    assert loss.item() == pytest.approx(-0.5) and m["pg_loss"] == pytest.approx(-0.5)
    assert "kl" not in m and m["clip_frac"] == 0.0 and m["ratio_mean"] == 1.0
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-0.25, -0.25, -0.25], [0.25, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        grpo_loss(lp, None, adv, mask, None, kl_coef=0.1)


def test_grpo_loss_adds_kl_and_entropy_terms():
    lp = torch.full((1, 2), math.log(0.5))
    ref = torch.full((1, 2), math.log(0.25))
    ent = torch.full((1, 2), 2.0)
    loss, m = grpo_loss(lp, lp, torch.tensor([1.0]), torch.ones(1, 2), ref, kl_coef=0.5, kl_kind="k1",
                        entropy=ent, entropy_coef=0.1)
    assert m["kl"] == pytest.approx(math.log(2)) and m["entropy"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(-1.0 + 0.5 * math.log(2) - 0.2)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_manual(temperature):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    ids = torch.randint(0, 7, (2, 5))
    out = token_logprobs(logits, ids, temperature)
    manual = torch.log_softmax(logits / temperature, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert out.shape == (2, 5) and (out[:, 0] == 0).all()
    assert torch.allclose(out[:, 1:], manual, atol=1e-6)
    out.sum().backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0  # last logits predict nothing


def test_token_logprobs_bf16_input_returns_float32():
    logits = torch.randn(1, 4, 5).bfloat16()
    ids = torch.randint(0, 5, (1, 4))
    out = token_logprobs(logits, ids)
    manual = torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert out.dtype == torch.float32 and torch.allclose(out[:, 1:], manual, atol=1e-6)


def test_entropy():
    V = 8
    assert torch.allclose(entropy_from_logits(torch.zeros(2, 3, V)), torch.full((2, 3), math.log(V)))
    logits = torch.randn(2, 3, V)
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-6)
    peaked = torch.tensor([[[0.0, -1e4, -1e4]]])
    assert entropy_from_logits(peaked).abs().item() < 1e-6
