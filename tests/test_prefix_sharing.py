"""``optim.share_prefix``: the sequences of a prompt packed into one row, the prompt run once
(agentrl/prefix_sharing.py). The project's tiny model, real trainer batches: the same log-probs,
entropy, gradient and update as running every sequence alone, on fewer tokens."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.logprobs import CausalLMParts, trained_token_stats
from agentrl.model import cached_tiny_model
from agentrl.prefix_sharing import group_order, pack_shared_prefixes
from agentrl.trainer import GRPOTrainer
from test_rl_update import fixed_batch
from test_trainer import tiny_cfg


def grouped_batch(seed=0, groups=3, group_size=4, prompt=40, width=80, vocab=500):
    """``groups`` prompts x ``group_size`` completions of varied lengths (a tool observation inside
    each, untrained), right-padded, plus one sequence that shares its prompt with nobody."""
    g = torch.Generator().manual_seed(seed)
    B = groups * group_size + 1
    ids = torch.zeros(B, width, dtype=torch.long)
    att = torch.zeros(B, width, dtype=torch.long)
    loss = torch.zeros(B, width)
    for k in range(groups):
        p = torch.randint(1, vocab, (prompt + k,), generator=g)
        for s in range(group_size):
            b = k * group_size + s
            n = int(torch.randint(len(p) + 12, width + 1, (), generator=g))
            ids[b, :n] = torch.cat([p, torch.randint(1, vocab, (n - len(p),), generator=g)])
            att[b, :n] = 1
            loss[b, len(p):n] = 1
            loss[b, len(p) + 3:len(p) + 7] = 0  # the tool's output: in the context, not trained
    ids[-1] = torch.randint(1, vocab, (width,), generator=g)
    att[-1] = 1
    loss[-1, 30:] = 1
    return ids, att, loss


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_prompts_give_the_same_logprobs_entropy_and_gradient(attention):
    model = AutoModelForCausalLM.from_pretrained(cached_tiny_model(), attn_implementation=attention)
    parts = CausalLMParts(model)
    ids, att, loss = grouped_batch()
    out = {}
    for packed in (None, attention):
        model.zero_grad()
        lp, ent = trained_token_stats(parts, ids, att, loss, temperature=0.7, with_entropy=True, attention=packed)
        (lp.sum() + 0.1 * ent.sum()).backward()
        out[packed] = lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (lp0, ent0, g0), (lp1, ent1, g1) = out[None], out[attention]
    assert (lp0 != 0).sum() == loss.sum()
    assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(ent0, ent1, atol=1e-5)
    assert torch.equal(lp1 == 0, loss == 0)  # exactly 0 off the loss mask, as before
    for n in g0:  # float rounding: the sums run in another order (seen: 5e-7 relative)
        assert (g0[n] - g1[n]).norm() <= 1e-5 * g0[n].norm() + 1e-8, n


def test_a_group_is_one_row_its_prompt_once_and_a_long_group_is_split():
    ids, att, loss = grouped_batch(groups=2, group_size=4, prompt=40, width=56)  # completions of 12-16 tokens
    packed = pack_shared_prefixes(ids, att, loss)
    lengths = att.sum(1)
    assert packed.input_ids.shape[0] == 3  # two groups and the loner
    for k, p in enumerate((40, 41)):
        members = range(4 * k, 4 * k + 4)
        row = packed.input_ids[k]
        assert int((packed.position_ids[k][row.ne(0)] == 0).sum()) == 1  # one prompt in the row
        assert int(row.ne(0).sum()) == p + sum(int(lengths[b]) - p for b in members)
        for b in members:  # every token of every member is in the row, at its own position
            r, c = packed.row[b, :lengths[b]], packed.col[b, :lengths[b]]
            assert torch.equal(packed.input_ids[r, c], ids[b, :lengths[b]])
            assert torch.equal(packed.position_ids[r, c], torch.arange(int(lengths[b])))
    mask = packed.attention_mask[0, 0]
    first = int(lengths[0])  # where the second completion starts: after the prompt and the first
    assert not mask[first, 40:first].any() and mask[first, :40].all()  # it sees the prompt, not completion 1
    # 12 completions of a long prompt: rows close at twice the longest sequence
    ids, att, loss = grouped_batch(groups=1, group_size=12, prompt=40, width=56)
    packed = pack_shared_prefixes(ids, att, loss)
    assert packed.input_ids.shape[0] > 2 and packed.input_ids.shape[1] <= 2 * 56
    # two full-width completions of a 5-token prompt: their row would cost more than the two sequences
    ids = torch.cat([torch.arange(1, 6).repeat(2, 1), torch.randint(6, 500, (2, 75))], dim=1)
    loss = torch.ones(2, 80)
    loss[:, :5] = 0
    assert pack_shared_prefixes(ids, torch.ones(2, 80, dtype=torch.long), loss) is None


def test_nothing_to_share_or_a_mask_outside_the_sequence_runs_unpacked():
    ids, att, loss = grouped_batch(groups=1, group_size=1)
    assert pack_shared_prefixes(ids, att, loss) is None  # two loners
    ids, att, loss = grouped_batch()
    att[0, -1] = 0
    loss[0, -1] = 1
    assert pack_shared_prefixes(ids, att, loss) is None


def test_group_order_keeps_each_prompts_sequences_together():
    ids, att, loss = grouped_batch(groups=3, group_size=4)
    perm = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(1))
    order = group_order(ids[perm], att[perm], loss[perm])
    prompt_of = [int(perm[i]) // 4 for i in order]
    runs = [k for i, k in enumerate(prompt_of) if i == 0 or k != prompt_of[i - 1]]
    assert len(runs) == len(set(runs))  # each prompt's sequences are contiguous


def test_share_prefix_option_runs_the_model_on_fewer_tokens_for_the_same_update(tmp_path):
    results = {}
    for value in (True, False):
        torch.manual_seed(0)
        # the Hermes system prompt (the tool's schema) is most of every sequence, as in real tool use
        trainer = GRPOTrainer(tiny_cfg(tmp_path / str(value), f"optim.share_prefix={value}", "optim.lr=1e-2",
                                       "env.kwargs.tool_format=hermes", "env.kwargs.max_turns=1",
                                       "rollout.max_total_tokens=400"))
        try:
            assert (trainer.updater.attention is not None) == value
            trajs, batch = fixed_batch(trainer, n_tasks=2, group_size=3)
            seen = []
            initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            hook = trainer.model.model.register_forward_pre_hook(
                lambda module, args, kwargs: seen.append(int(kwargs["input_ids"].numel())), with_kwargs=True)
            record = trainer.updater(batch, [len(trajs)], 0)
            hook.remove()
            weights = {k: v.detach().clone() - initial[k] for k, v in trainer.model.state_dict().items()}
        finally:
            trainer.close()
        results[value] = seen, record, weights
    (tokens_on, rec_on, w_on), (tokens_off, rec_off, w_off) = results[True], results[False]
    assert sum(tokens_on) < sum(tokens_off)  # the shared prompts ran once per group
    for key in ("train/loss", "train/grad_norm", "train/entropy"):
        assert rec_on[key] == pytest.approx(rec_off[key], rel=1e-4, abs=1e-6), key
    assert rec_on["train/grad_norm"] > 0
    for k in w_on:  # the same step (Adam's first step is ~lr x sign(g): rounding flips a few tiny ones)
        assert (w_on[k] - w_off[k]).norm() <= 1e-3 * w_off[k].norm(), k


def test_common_prefix_length():
    from agentrl.prefix_sharing import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([(1, 2), (1, 2)]) == 2
    assert common_prefix_length([[7], [1]]) == 0


def test_rollout_share_prefix_option_prefills_fewer_positions_for_the_same_episodes(tmp_path):
    """``rollout.share_prefix``: the HF engine's prefill computes the group's prompt (and the
    Hermes system prompt all prompts share) once; the episodes are the same, token for token."""
    results = {}
    for value in (True, False):
        trainer = GRPOTrainer(tiny_cfg(tmp_path / str(value), f"rollout.share_prefix={value}",
                                       "env.kwargs.tool_format=hermes", "env.kwargs.max_turns=2",
                                       "rollout.max_total_tokens=400"))
        try:
            assert trainer.rollout.share_prefix is value
            seen = []
            hook = trainer.model.model.register_forward_pre_hook(
                lambda module, args, kwargs: seen.append(int(kwargs["input_ids"].numel())), with_kwargs=True)
            trajs = trainer.collector.collect(trainer.tasks[:2], 3, seed=5)
            hook.remove()
        finally:
            trainer.close()
        results[value] = sum(seen), [t.input_ids for t in trajs]
    (positions_on, episodes_on), (positions_off, episodes_off) = results[True], results[False]
    assert episodes_on == episodes_off
    assert positions_on < positions_off / 2, (positions_on, positions_off)
