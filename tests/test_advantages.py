import math

import pytest
import torch

from agentrl.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    informative_groups,
    register_advantage,
    soft_overlong_penalty,
    turn_level_advantages,
)

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_registry_has_estimators():
    assert {"grpo", "drgrpo", "rloo", "reinforce_pp"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError):
        compute_advantages("nope", R, G)


def test_grpo_unbiased_std():
    # group 0: mean .5, deviations +-.5, unbiased var = (4 * .25) / 3 = 1/3
    a = 0.5 / math.sqrt(1 / 3)  # 0.8660
    expected = [a, -a, -a, a, 0, 0, 0, 0]
    assert close(compute_advantages("grpo", R, G), expected)


def test_grpo_singleton_group_is_zero():
    assert close(compute_advantages("grpo", torch.tensor([3.0]), torch.tensor([7])), [0.0])


def test_drgrpo():
    assert close(compute_advantages("drgrpo", R, G), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_rloo():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 5.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    # r_i - mean(others): 1-0, 0-1/3 (x3), 2-4, 4-2, singleton -> 0
    assert close(compute_advantages("rloo", r, g), [1.0, -1 / 3, -1 / 3, -1 / 3, -2.0, 2.0, 0.0])


def test_reinforce_pp_baseline_then_whiten():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 1, 1])
    # a = [.5, -.5, 0, 0]; batch mean 0; unbiased std = sqrt(.5 / 3)
    s = math.sqrt(0.5 / 3)
    assert close(compute_advantages("reinforce_pp", r, g), [0.5 / s, -0.5 / s, 0, 0])


def test_group_ids_need_not_be_contiguous_or_sorted():
    r = torch.tensor([1.0, 5.0, 0.0, 7.0])
    g = torch.tensor([42, 3, 42, 3])
    assert close(compute_advantages("drgrpo", r, g), [0.5, -1.0, -0.5, 1.0])


def test_register_custom_estimator():
    @register_advantage("test_raw")
    def raw(rewards, group_ids, **_):
        return rewards * 2

    assert close(compute_advantages("test_raw", R, G), R * 2)
    del ADVANTAGE_ESTIMATORS["test_raw"]


def test_turn_level_two_turns_by_hand():
    turns = [[0.1, 0.2], [0.0, 0.1]]
    outcome = torch.tensor([1.0, 0.0])
    g = torch.tensor([0, 0])
    # reward-to-go: ep0 [1.3, 1.2], ep1 [0.1, 0.1]; episode returns G0 = [1.3, 0.1]
    # grpo: mean .7, unbiased std = sqrt(2 * .36 / 1) = .848528
    std = math.sqrt(0.72)
    out = turn_level_advantages(turns, outcome, g, "grpo")
    assert close(out[0], [0.6 / std, 0.5 / std]) and close(out[1], [-0.6 / std, -0.6 / std])
    out = turn_level_advantages(turns, outcome, g, "drgrpo")
    assert close(out[0], [0.6, 0.5]) and close(out[1], [-0.6, -0.6])
    out = turn_level_advantages(turns, outcome, g, "rloo")  # baseline = the other's G0
    assert close(out[0], [1.2, 1.1]) and close(out[1], [-1.2, -1.2])


def test_turn_level_first_turn_matches_episode_estimator_and_ragged():
    torch.manual_seed(0)
    turns = [[0.5], [], [0.1, -0.2, 0.3], [1.0, 0.0], [0.2], [0.0, 0.0]]
    outcome = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    g0 = torch.tensor([sum(t) + r for t, r in zip(turns, outcome.tolist())])
    for est in ("grpo", "drgrpo", "rloo", "reinforce_pp"):
        out = turn_level_advantages(turns, outcome, g, est)
        assert [len(o) for o in out] == [len(t) for t in turns]
        ep = compute_advantages(est, g0, g)
        for o, a in zip(out, ep.tolist()):
            if o:
                assert abs(o[0] - a) < 1e-5, est


def test_turn_level_without_process_rewards_equals_outcome_advantage():
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 0, 0])
    out = turn_level_advantages([[0.0, 0.0, 0.0]] * 4, outcome, g, "grpo")
    ep = compute_advantages("grpo", outcome, g)
    for o, a in zip(out, ep.tolist()):
        assert close(o, [a] * 3)


def test_informative_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3])
    assert informative_groups(r, g).tolist() == [True] * 4 + [False] * 4 + [False] + [False] * 2


def test_soft_overlong_penalty_three_regions():
    L = torch.tensor([50, 80, 90, 95, 100, 101, 500])
    # max_len 100, cache 20: no penalty up to 80, linear to -1 at 100, -1 beyond
    assert close(soft_overlong_penalty(L, 100, 20), [0, 0, -0.5, -0.75, -1.0, -1.0, -1.0])
    assert close(soft_overlong_penalty(L, 100, 20, penalty=0.5), [0, 0, -0.25, -0.375, -0.5, -0.5, -0.5])
