"""HFEngine: stop strings, n samples, seeds, log-probs equal to a teacher-forced forward pass."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.engines import SamplingParams, make_engine
from agentrl.engines.hf import HFEngine, filter_logits
from agentrl.model import cached_tiny_model


@pytest.fixture(scope="module")
def path():
    return cached_tiny_model()


@pytest.fixture(scope="module")
def engine(path):
    return HFEngine(path)


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    qs = ["What is 1234 * 5678?", "What is 12 * 3?", "Where is the Nile river? Answer the question briefly please."]
    out = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in qs]
    return [tok.encode(t, add_special_tokens=False) for t in out] + [tok.encode("7", add_special_tokens=False)]


def teacher_forced_logprobs(model, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_n_samples_layout_and_logprobs_match_teacher_forcing(engine, prompts):
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=24, n=3, seed=0)
    outs = engine.generate(prompts, sp)
    assert len(outs) == len(prompts) * 3
    assert [c.prompt_index for c in outs] == [i for i in range(len(prompts)) for _ in range(3)]
    worst = 0.0
    for c in outs:
        assert len(c.token_ids) == len(c.logprobs) > 0
        assert c.finish_reason in ("eos", "length", "stop")
        ref = teacher_forced_logprobs(engine.model, prompts[c.prompt_index], c.token_ids, 0.7)
        worst = max(worst, (ref - torch.tensor(c.logprobs)).abs().max().item())
    assert worst < 1e-4
    # The n samples of one prompt differ (sampling), given a random model and 24 tokens.
    assert len({tuple(c.token_ids) for c in outs[:3]}) > 1


def test_seed_reproducibility(engine, prompts):
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=123)
    a, b = engine.generate(prompts, sp), engine.generate(prompts, sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    c = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=124))
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_length_finish(engine, prompts):
    engine_no_eos = HFEngine(engine.model, tokenizer=engine.tokenizer, eos_token_ids=[])
    outs = engine_no_eos.generate(prompts[:2], SamplingParams(max_new_tokens=7, seed=0))
    assert all(c.finish_reason == "length" and len(c.token_ids) == 7 and c.stop_string is None for c in outs)


def test_greedy_matches_argmax_and_batch_independent(engine, prompts):
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    batched = engine.generate(prompts, sp)
    for i, p in enumerate(prompts):
        single = engine.generate([p], sp)[0]
        assert single.token_ids == batched[i].token_ids  # left padding does not change results
        ref = teacher_forced_logprobs(engine.model, p, single.token_ids, 1.0)  # greedy: T=1 log-probs
        assert (ref - torch.tensor(single.logprobs)).abs().max().item() < 1e-4


def test_stop_strings_honoured_and_kept(engine, prompts):
    tok = engine.tokenizer
    free = HFEngine(engine.model, tokenizer=tok, eos_token_ids=[])
    sp = SamplingParams(temperature=0, max_new_tokens=30)
    base = free.generate(prompts, sp)
    for i, c in enumerate(base):
        # The text of a few tokens in the middle of the greedy output becomes a stop string.
        k = 10
        before = tok.decode(c.token_ids[: k - 1])
        upto = tok.decode(c.token_ids[:k])
        stop = upto[len(before) - 2 :] if len(before) >= 2 else upto
        if not stop.strip() or stop in before:
            continue
        out = free.generate([prompts[i]], SamplingParams(temperature=0, max_new_tokens=30, stop=("never-there", stop)))[0]
        assert out.finish_reason == "stop" and out.stop_string == stop
        assert out.token_ids == c.token_ids[:k]
        assert tok.decode(out.token_ids).endswith(stop) or stop in tok.decode(out.token_ids)
        assert len(out.logprobs) == k


def test_stop_string_sequences_dropped_others_continue(engine, prompts):
    tok = engine.tokenizer
    free = HFEngine(engine.model, tokenizer=tok, eos_token_ids=[])
    sp = SamplingParams(temperature=1.0, max_new_tokens=20, seed=5, n=2)
    base = free.generate(prompts, sp)
    stop = tok.decode(base[0].token_ids[:3])
    others = [j for j in range(1, len(base)) if stop not in tok.decode(base[j].token_ids)]
    assert others, "a 3-token prefix of one sample appears in every other sample"
    outs = free.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=20, seed=5, n=2, stop=(stop,)))
    assert outs[0].finish_reason == "stop" and outs[0].stop_string == stop and len(outs[0].token_ids) <= 3
    for j in others:  # same random stream per step only while the batch is unchanged: compare prefixes
        assert outs[j].finish_reason == "length" and len(outs[j].token_ids) == 20


def test_eos_finish(path):
    # A model whose EOS is the greedy first token finishes with "eos" and keeps the EOS id.
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.encode("What is 1234 * 5678?")
    with torch.no_grad():
        first = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    eng = HFEngine(model, tokenizer=tok, eos_token_ids=[first])
    c = eng.generate([ids], SamplingParams(temperature=0, max_new_tokens=10))[0]
    assert c.finish_reason == "eos" and c.token_ids == [first]


def test_top_k_top_p_filtering():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    p = logits.softmax(-1)[0]
    kept = ~torch.isinf(filter_logits(logits, top_p=float(p[3]) + 1e-3))
    assert kept.tolist() == [[False, False, True, True]]
    assert (~torch.isinf(filter_logits(logits, top_p=0.01))).sum() == 1


def test_shared_module_and_update_weights(path, prompts, tmp_path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    eng = make_engine("hf", model, tokenizer=tok)
    assert eng.model is model
    sp = SamplingParams(temperature=0, max_new_tokens=8)
    before = eng.generate(prompts[:1], sp)[0].token_ids
    eng.update_weights(model.state_dict())  # same tensors: no-op
    assert eng.generate(prompts[:1], sp)[0].token_ids == before
    from agentrl.model import init_tiny_model

    other = AutoModelForCausalLM.from_pretrained(init_tiny_model(tmp_path / "seed1", seed=1)).state_dict()
    fresh = HFEngine(path)
    fresh.update_weights(other)
    changed = fresh.generate(prompts[:1], sp)[0]
    ref = teacher_forced_logprobs(fresh.model, prompts[0], changed.token_ids, 1.0)
    assert (ref - torch.tensor(changed.logprobs)).abs().max() < 1e-4
    assert torch.equal(fresh.model.model.embed_tokens.weight, other["model.embed_tokens.weight"])
    assert changed.token_ids != before


def test_num_threads_restored(engine, prompts):
    old = torch.get_num_threads()
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=2))
    assert torch.get_num_threads() == old


def test_shared_prefix_prefill_gives_the_same_completions_on_fewer_positions(path):
    """``share_prefix``: identical prompts prefilled once, the prefix of all prompts once for the
    batch. Same tokens (greedy and seeded sampling) and log-probs as the full prefill, far fewer
    positions through the model."""
    from agentrl.envs.python_tool import HERMES_SYSTEM_PROMPT
    from agentrl.tools import PythonTool, tool_schema

    tok = AutoTokenizer.from_pretrained(path)
    tools = [tool_schema(PythonTool(None))]

    def chat(q):
        msgs = [{"role": "system", "content": HERMES_SYSTEM_PROMPT}, {"role": "user", "content": q}]
        return tok.encode(tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)

    group = chat("What is 1234 * 5678?")
    prompts = [group, group, chat("What is 12 * 3?"), chat("Where is the Nile river? Answer briefly please."), group]
    model = AutoModelForCausalLM.from_pretrained(path)
    positions = []
    model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: positions.append(args[0].numel()))
    shared, full = HFEngine(model, tokenizer=tok, share_prefix=True), HFEngine(model, tokenizer=tok, share_prefix=False)
    for sp in (SamplingParams(temperature=0.0, max_new_tokens=12), SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)):
        positions.clear()
        a = shared.generate(prompts, sp)
        prefill_shared = positions[0] + positions[1]  # the shared prefix, then the distinct suffixes
        positions.clear()
        b = full.generate(prompts, sp)
        prefill_full = positions[0]
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        for x, y in zip(a, b):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
        assert prefill_full == len(prompts) * max(map(len, prompts))
        assert prefill_shared < prefill_full / 3, (prefill_shared, prefill_full)
    # identical prompts sample independently after the shared prefill
    many = shared.generate([group] * 4, SamplingParams(temperature=1.0, max_new_tokens=12, seed=3))
    assert len({tuple(c.token_ids) for c in many}) > 1
