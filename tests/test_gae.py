"""The mathematics of PPO-with-a-critic on hand-made batches: token-level GAE over the policy's own
tokens (observation spans are transitions, not steps), decoupled and length-adaptive lambdas, reward
placement, the clipped value loss and whitening against verl's code (tests/reference/verl_gae.py),
and VAPO's NLL term on positive samples."""
from __future__ import annotations

import pytest
import torch

from agentrl.critic import value_loss
from agentrl.gae import gae_advantages_returns, length_adaptive_lambda, masked_whiten, token_rewards
from agentrl.losses import positive_nll
from reference import verl_gae


def direct_gae(rewards, values, mask, gamma, lam):
    """GAE by its definition, no recursion: over the action positions t_1 < ... < t_n only,
    A_k = sum_{j >= k} (gamma lam)^(j - k) delta_j, delta_j = r_j + gamma V_{j+1} - V_j, V_{n+1} = 0."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        steps = mask[b].nonzero().flatten().tolist()
        v = [float(values[b, t]) for t in steps] + [0.0]
        deltas = [float(rewards[b, t]) + gamma * v[k + 1] - v[k] for k, t in enumerate(steps)]
        lam_b = float(lam[b]) if isinstance(lam, torch.Tensor) else lam
        for k, t in enumerate(steps):
            adv[b, t] = sum((gamma * lam_b) ** (j - k) * deltas[j] for j in range(k, len(steps)))
    return adv, (adv + values) * mask


# prompt (2) | action (3) | observation (2) | action (2) | observation (3) | action (2) | padding (2)
MASK_TWO_OBS = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.float32)


def test_two_observation_spans_are_transitions_not_steps():
    torch.manual_seed(0)
    mask = MASK_TWO_OBS
    values = torch.randn(mask.shape) * mask
    rewards = torch.zeros(mask.shape)
    rewards[0, 13] = 1.0  # the outcome, at the last action token
    rewards[0, 8] = 0.25  # a turn reward, at the second turn's last action token
    for gamma, lam in [(1.0, 1.0), (0.9, 0.95), (0.99, 0.0), (0.8, 0.5)]:
        adv, ret = gae_advantages_returns(rewards, values, mask, gamma, lam)
        want_adv, want_ret = direct_gae(rewards, values, mask, gamma, lam)
        assert torch.allclose(adv, want_adv, atol=1e-6), (gamma, lam)
        assert torch.allclose(ret, want_ret, atol=1e-6)
        assert adv[mask == 0].abs().sum() == 0 and ret[mask == 0].abs().sum() == 0
    # spelled out at one boundary: the last action before the first observation (t=4) bootstraps from
    # the first action after it (t=7), with one factor of gamma, whatever the observation's length
    gamma, lam = 0.9, 0.0
    adv, _ = gae_advantages_returns(rewards, values, mask, gamma, lam)
    assert float(adv[0, 4]) == pytest.approx(float(rewards[0, 4] + gamma * values[0, 7] - values[0, 4]), abs=1e-6)
    assert float(adv[0, 8]) == pytest.approx(float(rewards[0, 8] + gamma * values[0, 12] - values[0, 8]), abs=1e-6)
    assert float(adv[0, 13]) == pytest.approx(float(rewards[0, 13] - values[0, 13]), abs=1e-6)  # terminal


def test_observation_length_does_not_change_the_estimate():
    # the same actions with a 2-token or a 7-token tool output between them: identical advantages
    short = torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    long = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.float32)
    v_s, v_l = torch.zeros(short.shape), torch.zeros(long.shape)
    v_s[short.bool()] = v_l[long.bool()] = torch.tensor([0.1, 0.4, -0.2, 0.3])
    r_s, r_l = torch.zeros(short.shape), torch.zeros(long.shape)
    r_s[0, -1] = r_l[0, -1] = 1.0
    a_s, _ = gae_advantages_returns(r_s, v_s, short, 0.9, 0.8)
    a_l, _ = gae_advantages_returns(r_l, v_l, long, 0.9, 0.8)
    assert torch.allclose(a_s[short.bool()], a_l[long.bool()])


def assert_matches_verl(rewards, values, mask, gamma: float, lam: float) -> None:
    """Our GAE returns equal verl's compute_gae_advantage_return's on the response tokens, and our
    advantages equal its after the same whitening (verl returns them whitened over the batch)."""
    ours_adv, ours_ret = gae_advantages_returns(rewards, values, mask, gamma, lam)
    verl_adv, verl_ret = verl_gae.compute_gae_advantage_return(rewards, values, mask, torch.tensor(gamma),
                                                               torch.tensor(lam))
    keep = mask.bool()
    assert torch.allclose(ours_ret[keep], verl_ret[keep], atol=1e-6)
    assert torch.allclose(masked_whiten(ours_adv, mask)[keep], verl_adv[keep], atol=1e-5)


def test_matches_verl_on_sequences_without_observations():
    torch.manual_seed(1)
    B, T = 5, 12
    lengths = torch.tensor([12, 7, 1, 9, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()  # response tokens, then padding
    values = torch.randn(B, T)
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = torch.randn(B)
    rewards += 0.1 * torch.randn(B, T) * mask  # dense per-token rewards too (e.g. a KL penalty)
    for gamma, lam in [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)]:
        assert_matches_verl(rewards, values, mask, gamma, lam)


def test_matches_verl_with_observation_spans_too():
    # verl's loop also skips masked tokens (multi-turn), so the two agree on the two-span trajectory
    torch.manual_seed(2)
    mask = MASK_TWO_OBS.repeat(3, 1)
    values = torch.randn(mask.shape)
    rewards = torch.zeros(mask.shape)
    rewards[:, 13] = torch.tensor([1.0, 0.0, -0.5])
    assert_matches_verl(rewards, values * mask, mask, 0.95, 0.9)


def test_decoupled_lambdas():
    torch.manual_seed(3)
    mask = MASK_TWO_OBS.repeat(2, 1)
    values = torch.randn(mask.shape) * mask
    rewards = torch.zeros(mask.shape)
    rewards[:, 13] = torch.tensor([1.0, 0.0])
    rewards[0, 4] = 0.5
    # lambda_critic = 1, gamma = 1: the critic's target is the Monte-Carlo return, whatever V is
    _, returns = gae_advantages_returns(rewards, values, mask, 1.0, 1.0)
    mc = torch.flip(torch.cumsum(torch.flip(rewards, [1]), 1), [1]) * mask  # reward-to-go
    assert torch.allclose(returns, mc, atol=1e-6)
    # lambda_policy = 0: the advantage is the one-step TD error
    adv0, _ = gae_advantages_returns(rewards, values, mask, 1.0, 0.0)
    steps = mask[0].nonzero().flatten().tolist()
    for k, t in enumerate(steps):
        v_next = float(values[0, steps[k + 1]]) if k + 1 < len(steps) else 0.0
        assert float(adv0[0, t]) == pytest.approx(float(rewards[0, t]) + v_next - float(values[0, t]), abs=1e-6)
    # the two estimates really are different functions of lambda
    adv95, ret95 = gae_advantages_returns(rewards, values, mask, 1.0, 0.95)
    assert not torch.allclose(adv95, adv0) and not torch.allclose(ret95, returns)


def test_length_adaptive_lambda():
    lengths = [40, 100, 1000, 10, 20]
    mask = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    lam = length_adaptive_lambda(mask, alpha=0.05)
    assert lam.tolist() == pytest.approx([1 - 1 / 2, 1 - 1 / 5, 1 - 1 / 50, 0.0, 0.0])  # 1 - 1/(alpha l), >= 0
    assert torch.allclose(1 / (1 - lam[:3]), 0.05 * torch.tensor(lengths[:3], dtype=torch.float32))  # horizon alpha*l
    # per-episode lambdas in one batch == each episode on its own with its scalar lambda
    torch.manual_seed(4)
    values, rewards = torch.randn(mask.shape) * mask, torch.randn(mask.shape) * mask
    together, _ = gae_advantages_returns(rewards, values, mask, 1.0, lam)
    for i in range(len(lengths)):
        alone, _ = gae_advantages_returns(rewards[i:i + 1], values[i:i + 1], mask[i:i + 1], 1.0, float(lam[i]))
        assert torch.allclose(together[i], alone[0], atol=1e-6)
    with pytest.raises(ValueError, match="alpha > 0"):
        length_adaptive_lambda(mask, alpha=0.0)


def test_rewards_sit_on_the_last_action_token_of_each_turn():
    mask = MASK_TWO_OBS.repeat(3, 1)
    mask[2] = 0  # an episode with no trained token (e.g. masked as truncated)
    spans = [[(2, 5), (7, 9), (12, 14)]] * 3  # the three model turns (collector's turn_spans)
    turn_rewards = [[0.1, 0.2, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]
    out = token_rewards(mask, torch.tensor([1.5, -1.0, 0.3]), spans, turn_rewards)
    assert out[0, 4] == pytest.approx(0.1) and out[0, 8] == pytest.approx(0.2)
    assert out[0, 13] == pytest.approx(1.5 - 0.3)  # the rest of the episode's reward: outcome + shaping
    assert out[1, 13] == -1.0 and out[1].abs().sum() == 1.0
    assert out[2].abs().sum() == 0
    assert torch.allclose(out[:2].sum(-1), torch.tensor([1.5, -1.0]))  # every reward lands exactly once
    assert out[mask == 0].abs().sum() == 0  # never on prompt, observation or padding tokens


def test_clipped_value_loss_is_verls():
    torch.manual_seed(5)
    mask = MASK_TWO_OBS.repeat(4, 1)
    old = torch.randn(mask.shape)
    returns = torch.randn(mask.shape)
    vpreds = (old + torch.randn(mask.shape)).requires_grad_(True)  # many beyond the clip range
    for c in (0.2, 0.5, 10.0):
        ours, clip_frac = value_loss(vpreds, returns, old, mask, c)
        want, want_frac = verl_gae.compute_value_loss(vpreds, returns, old, mask, c, "token-mean")
        assert ours.item() == pytest.approx(want.item(), rel=1e-6)
        assert clip_frac == pytest.approx(float(want_frac), rel=1e-5)
        g_ours, = torch.autograd.grad(ours, vpreds)
        g_want, = torch.autograd.grad(want, vpreds)
        assert torch.allclose(g_ours, g_want, atol=1e-7)
        assert g_ours[mask == 0].abs().sum() == 0
    # a micro-batch divides by the minibatch's token count
    half, _ = value_loss(vpreds[:2], returns[:2], old[:2], mask[:2], 0.5, normalizer=float(mask.sum()))
    rest, _ = value_loss(vpreds[2:], returns[2:], old[2:], mask[2:], 0.5, normalizer=float(mask.sum()))
    assert (half + rest).item() == pytest.approx(value_loss(vpreds, returns, old, mask, 0.5)[0].item(), rel=1e-6)


def test_whitening_is_verls():
    torch.manual_seed(6)
    mask = MASK_TWO_OBS.repeat(3, 1)
    x = torch.randn(mask.shape)
    keep = mask.bool()
    assert torch.allclose(masked_whiten(x, mask)[keep], verl_gae.masked_whiten(x, mask)[keep], atol=1e-5)
    assert masked_whiten(x, mask)[~keep].abs().sum() == 0


def test_positive_nll_only_on_positive_episodes_action_tokens():
    torch.manual_seed(7)
    mask = MASK_TWO_OBS.repeat(3, 1)
    logprobs = (-torch.rand(mask.shape)).requires_grad_(True)
    positive = torch.tensor([1.0, 0.0, 1.0])[:, None].expand_as(mask)  # episodes 0 and 2 had reward > 0
    nll = positive_nll(logprobs, mask * positive)
    on = (mask * positive).bool()
    assert nll.item() == pytest.approx((-logprobs[on].sum() / on.sum()).item())  # -1/N sum over T's tokens
    g, = torch.autograd.grad(nll, logprobs)
    assert (g[on] == -1.0 / on.sum()).all() and g[~on].abs().sum() == 0  # no gradient off T's action tokens
    assert positive_nll(logprobs, mask * 0).item() == 0.0  # no positive episode: no term
