"""``agentrl dpo``: the DPO / IPO / KTO losses against TRL's code (tests/reference/trl_preference_losses.py),
pair building, the masked sequence log-probs on the real tiny model, a short real run that moves
the policy, and the errors bad input gets."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from reference import trl_preference_losses as trl

from agentrl.preference import (LOSSES, PairLogps, UnpairedLogps, build_pairs, get_loss, kto_kl, load_rollouts,
                                mismatched, sequence_logps)
from agentrl.types import StopReason, Trajectory

BETAS = (0.05, 0.1, 0.5, 2.0)


def trl_self(beta, label_smoothing=0.0, desirable_weight=1.0, undesirable_weight=1.0):
    """The attributes TRL's loss methods read from ``self`` (one process: gather is the identity)."""
    return SimpleNamespace(beta=beta, label_smoothing=label_smoothing, reference_free=False, loss_type="kto",
                           f_divergence_type=trl.FDivergenceType.REVERSE_KL, f_divergence_params=None,
                           calculate_KL=True, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                           accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x))


def random_pairs(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = [-30 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]
    tokens = [torch.randint(1, 40, (n,), generator=g).double() for _ in range(2)]
    return PairLogps(*logps, *tokens)


# ----------------------------------------------------------------------------- (1) losses vs TRL


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.1, 0.3))
def test_dpo_loss_matches_trl_sigmoid(beta, label_smoothing):
    x = random_pairs(seed=int(beta * 100))
    ours = get_loss("dpo").fn(x, beta=beta, label_smoothing=label_smoothing)
    theirs = trl.dpo_loss(trl_self(beta, label_smoothing), x.chosen, x.rejected, x.ref_chosen, x.ref_rejected,
                          loss_type="sigmoid")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_loss_matches_trl_with_its_length_normalisation(beta):
    x = random_pairs(seed=3)
    ours = get_loss("ipo").fn(x, beta=beta)
    # TRL's concatenated_forward divides every summed log-prob (policy and reference) by the
    # sequence's completion-token count before dpo_loss sees it
    def norm(logps, tokens):
        mask = torch.arange(40)[None, :] < tokens[:, None]
        return trl.ipo_normalised_logps(logps, mask.double())

    theirs = trl.dpo_loss(trl_self(beta), norm(x.chosen, x.chosen_tokens), norm(x.rejected, x.rejected_tokens),
                          norm(x.ref_chosen, x.chosen_tokens), norm(x.ref_rejected, x.rejected_tokens), loss_type="ipo")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("kl_shift", (-2.0, 0.0, 3.0))  # -2: the mean log-ratio is negative, z0 clamps to 0
@pytest.mark.parametrize("weights", ((1.0, 1.0), (1.33, 0.7)))
def test_kto_loss_matches_trl(beta, kl_shift, weights):
    g = torch.Generator().manual_seed(1)
    n = 9
    logps, ref = -20 * torch.rand(n, generator=g, dtype=torch.float64), -20 * torch.rand(n, generator=g, dtype=torch.float64)
    desirable = torch.tensor([True, False, True, True, False, False, True, False, True])
    ref_kl = -20 * torch.rand(n, generator=g, dtype=torch.float64)
    policy_kl = ref_kl + kl_shift + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    kl = kto_kl(policy_kl, ref_kl)
    ours = get_loss("kto").fn(UnpairedLogps(logps, ref, desirable, kl), beta=beta, desirable_weight=weights[0],
                              undesirable_weight=weights[1])
    losses, chosen, rejected, trl_kl = trl.kto_loss(trl_self(beta, desirable_weight=weights[0], undesirable_weight=weights[1]),
                                                     logps[desirable], logps[~desirable], policy_kl,
                                                     ref[desirable], ref[~desirable], ref_kl)
    torch.testing.assert_close(kl, trl_kl)
    # TRL concatenates the desirable losses, then the undesirable ones; ours keep the examples' order
    torch.testing.assert_close(torch.cat([ours[0][desirable], ours[0][~desirable]]), losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], chosen)
    torch.testing.assert_close(ours[2], rejected)
    if kl_shift < 0:
        assert float(kl) == 0.0


def test_loss_registry_names():
    assert {"dpo", "ipo", "kto"} <= set(LOSSES)
    assert get_loss("dpo").paired and get_loss("ipo").paired and not get_loss("kto").paired
    with pytest.raises(ValueError, match="unknown preference loss 'simpo'.*dpo, ipo, kto"):
        get_loss("simpo")


# ----------------------------------------------------------------------------- (2) pairs


def traj(reward, group_id=0, task_id="t", step=None, ids=None):
    ids = ids or [1, 2, 3, int(reward * 10) + 4, 5]
    t = Trajectory(ids, [0, 0, 1, 1, 1][: len(ids)], [0.0] * len(ids), 2, [], reward, {}, StopReason.ANSWER, False,
                   group_id=group_id, task_id=task_id)
    if step is not None:
        t.info["rollout_step"] = step
    return t


def test_pairs_within_a_group_by_margin_without_ties():
    trajs = [traj(1.0), traj(0.0), traj(0.5), traj(1.0, ids=[1, 2, 9, 9, 9])]
    assert sorted(build_pairs(trajs, margin=0.5, max_pairs_per_group=100)) == [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]
    assert sorted(build_pairs(trajs, margin=0.6, max_pairs_per_group=100)) == [(0, 1), (3, 1)]
    with pytest.raises(ValueError, match="margin must be > 0"):
        build_pairs(trajs, margin=0.0, max_pairs_per_group=100)


def test_groups_never_mix():
    # same group_id in two GRPO steps, and two tasks: no pair crosses a (step, group_id, task_id) key
    trajs = [traj(1.0, 0, "a", step=1), traj(0.0, 0, "a", step=2), traj(0.0, 1, "b", step=1),
             traj(1.0, 0, "a", step=2, ids=[7, 7, 7, 7, 7]), traj(0.0, 0, "c", step=1)]
    assert build_pairs(trajs, 0.5, 100) == [(3, 1)]


def test_identical_sequences_and_empty_responses_never_pair():
    same = [1, 2, 3, 4, 5]
    trajs = [traj(1.0, ids=same), traj(0.0, ids=same), traj(0.0)]
    trajs[2].loss_mask = [0] * 5
    assert build_pairs(trajs, 0.5, 100) == []


def test_cap_per_group_is_a_deterministic_seeded_sample():
    group = [traj(1.0, ids=[1, 2, 3, i, 5]) for i in range(4)] + [traj(0.0, ids=[1, 2, 4, i, 6]) for i in range(4)]
    other = [traj(1.0, 1), traj(0.0, 1)]
    trajs = group + other
    a = build_pairs(trajs, 0.5, max_pairs_per_group=3, seed=7)
    assert a == build_pairs(trajs, 0.5, max_pairs_per_group=3, seed=7)
    assert len([p for p in a if p[0] < 8]) == 3 and (8, 9) in a
    assert all(trajs[i].reward == 1.0 and trajs[j].reward == 0.0 for i, j in a)
    seeds = {tuple(build_pairs(trajs, 0.5, 3, seed=s)) for s in range(6)}
    assert len(seeds) > 1  # the sample depends on the seed (16 candidates, 3 kept)


def test_kto_mismatched_sequences_shift_responses_by_one():
    trajs = [traj(1.0, ids=[1, 2, 10, 11, 12]), traj(0.0, ids=[3, 4, 20, 21, 22])]
    kl = mismatched(trajs)
    assert kl[0].input_ids == [1, 2, 20, 21, 22] and kl[1].input_ids == [3, 4, 10, 11, 12]
    assert kl[0].loss_mask == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- (3) masked log-probs


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.model import cached_tiny_model

    path = cached_tiny_model()
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def masked_batch():
    """Two sequences: prompt (0), policy tokens (1), a tool observation (0), policy tokens (1), padding."""
    ids = torch.tensor([[5, 6, 7, 40, 41, 42, 90, 91, 92, 43, 44, 0], [8, 9, 50, 51, 95, 96, 97, 52, 53, 54, 55, 56]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.float32)
    attn = torch.ones_like(ids)
    attn[0, -1] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": mask}


class FullLogits:
    """ModelParts whose 'hidden states' are the model's full [B, T, V] logits (head = identity), so
    the gradient with respect to every logit is visible after backward."""

    def __init__(self, model):
        self.model, self.logits = model, None

    def hidden(self, input_ids, attention_mask):
        self.logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        self.logits.retain_grad()
        return self.logits

    def head(self, h):
        return h


def test_sequence_logp_is_the_sum_over_policy_tokens_only(tiny):
    from agentrl.logprobs import CausalLMParts

    _, model, _ = tiny
    b = masked_batch()
    with torch.no_grad():
        ours = sequence_logps(CausalLMParts(model), b)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    direct = torch.zeros(2)
    for i in range(2):
        for t in range(1, b["input_ids"].shape[1]):
            if b["loss_mask"][i, t]:
                direct[i] += torch.log_softmax(logits[i, t - 1], -1)[b["input_ids"][i, t]]
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)


def test_loss_gradient_is_zero_at_masked_positions(tiny):
    _, model, _ = tiny
    b = masked_batch()
    parts = FullLogits(model)
    logps = sequence_logps(parts, b)
    x = PairLogps(logps[:1], logps[1:], torch.tensor([-30.0]), torch.tensor([-20.0]), b["loss_mask"][:1].sum(-1),
                  b["loss_mask"][1:].sum(-1))
    losses, _, _ = get_loss("dpo").fn(x, beta=0.1)
    losses.sum().backward()
    grad = parts.logits.grad.abs().sum(-1)  # [B, T]: logits at t predict token t+1
    predicts_policy_token = b["loss_mask"][:, 1:].bool()
    assert (grad[:, :-1][~predicts_policy_token] == 0).all()  # prompt, tool output, padding: exactly zero
    assert (grad[:, -1] == 0).all()
    assert (grad[:, :-1][predicts_policy_token] > 0).all()
    model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- (4) a real run


def write_preference_rollouts(path, tokenizer, n_tasks=4):
    """Groups of 3: two 'right' responses (reward 1) and one 'wrong' (reward 0) per task, each
    with a tool observation (loss mask 0) between two policy turns."""
    rows = []
    for task in range(n_tasks):
        prompt = tokenizer.encode(f"What is {task + 11} * {task + 23}?", add_special_tokens=False)
        for k, (text, reward) in enumerate(((" <python>print(1)</python>", 1.0), (" <python>print(2)</python>", 1.0),
                                            (" I will guess", 0.0))):
            first = tokenizer.encode(text, add_special_tokens=False)
            obs = tokenizer.encode(f" <output>{task * 7 + k}</output>", add_special_tokens=False)
            last = tokenizer.encode(" <answer>" + ("42" if reward else "13") + "</answer>", add_special_tokens=False)
            ids = prompt + first + obs + last
            mask = [0] * len(prompt) + [1] * len(first) + [0] * len(obs) + [1] * len(last)
            rows.append({"step": 1, "input_ids": ids, "loss_mask": mask, "prompt_len": len(prompt), "reward": reward,
                         "group_id": task, "task_id": f"task{task}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_dpo(tmp_path, *overrides):
    from agentrl.cli import main

    return main(["dpo", str(tmp_path / "cfg.yaml"), *overrides])


@pytest.mark.parametrize("loss", ("dpo", "kto"))
def test_dpo_run_moves_the_policy(tiny, tmp_path, loss):
    path, _, tokenizer = tiny
    write_preference_rollouts(tmp_path / "rollouts.jsonl", tokenizer)
    (tmp_path / "cfg.yaml").write_text(f"""
run: {{name: t, output_dir: {tmp_path / 'run'}, progress: false, report_to: [jsonl]}}
model: {{path: {path}, init_if_missing: null}}
rollouts: {tmp_path / 'rollouts.jsonl'}
algorithm: {{loss: {loss}, beta: 0.1, epochs: 6, batch_size: {8 if loss == "dpo" else 12}}}
optim: {{lr: 1.0e-3, micro_batch_size: 16}}
""")
    assert run_dpo(tmp_path) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"train/loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected", "train/grad_norm", "train/lr"}
    assert all(keys <= set(r) for r in rows)
    assert "reward/mean" in rows[0] and rows[0]["iteration"] == 1.0
    assert ("pairs/count" if loss == "dpo" else "kto/examples") in rows[0]
    margins = [r["rewards/margins"] for r in rows]
    steps = 6  # one batch per epoch: 8 pairs (2 per task); kto: the 12 examples
    assert len(rows) == steps and abs(margins[0]) < 1e-4  # the first step's policy is the reference
    assert margins[-1] > margins[0] + 0.5 and margins[-1] > margins[len(margins) // 2] > 0
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert (tmp_path / "run" / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- (5) bad input


def test_unknown_loss_name_is_a_config_error_listing_the_names():
    from agentrl.config import ConfigError, parse_config
    from agentrl.dpo import DPOConfig

    with pytest.raises(ConfigError, match="unknown preference loss 'orpo'; registered: dpo, ipo, kto"):
        parse_config({"rollouts": "x.jsonl", "algorithm": {"loss": "orpo"}}, schema=DPOConfig)
    with pytest.raises(ConfigError, match="exactly one source"):
        parse_config({}, schema=DPOConfig)
    with pytest.raises(ConfigError, match="label_smoothing only applies to loss: dpo"):
        parse_config({"rollouts": "x", "algorithm": {"loss": "ipo", "label_smoothing": 0.1}}, schema=DPOConfig)
    with pytest.raises(ConfigError, match="only apply to loss: kto"):
        parse_config({"rollouts": "x", "algorithm": {"desirable_threshold": 0.9}}, schema=DPOConfig)
    with pytest.raises(ConfigError, match="iterations > 1"):
        parse_config({"rollouts": "x", "iterations": 3}, schema=DPOConfig)


def test_missing_file_and_rows_without_loss_mask(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"rollouts file not found: {tmp_path / 'nope.jsonl'}.*agentrl rollout"):
        load_rollouts(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_ids": [1, 2], "loss_mask": [0, 1], "reward": 1, "prompt_len": 1}) + "\n"
                   + json.dumps({"input_ids": [1, 2], "reward": 1, "prompt_len": 1}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: line 2: row has no loss_mask"):
        load_rollouts(bad)


def test_cli_errors_name_the_file_and_the_fix(tiny, tmp_path):
    path, _, tokenizer = tiny
    (tmp_path / "cfg.yaml").write_text(f"model: {{path: {path}, init_if_missing: null}}\n"
                                       f"run: {{output_dir: {tmp_path / 'run'}, progress: false, report_to: [jsonl]}}\n")
    with pytest.raises(SystemExit, match="rollouts file not found: .*missing.jsonl"):
        run_dpo(tmp_path, f"rollouts={tmp_path / 'missing.jsonl'}")
    flat = tmp_path / "flat.jsonl"  # every group's rewards equal: no pair
    write_preference_rollouts(flat, tokenizer, n_tasks=2)
    flat.write_text("".join(json.dumps({**json.loads(line), "reward": 1.0}) + "\n" for line in flat.read_text().splitlines()))
    with pytest.raises(SystemExit, match="no preference pairs in .*flat.jsonl: 6 trajectories in 2 groups.*loss: kto"):
        run_dpo(tmp_path, f"rollouts={flat}")
    with pytest.raises(SystemExit, match="unknown preference loss 'dpo2'"):
        run_dpo(tmp_path, f"rollouts={flat}", "algorithm.loss=dpo2")
