"""The tiny local model: deterministic init, tokenizer behaviour, chat template."""
from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.model import TAG_TOKENS, cached_tiny_model, count_parameters, init_tiny_model


@pytest.fixture(scope="module")
def tiny():
    return cached_tiny_model()


@pytest.fixture(scope="module")
def tok(tiny):
    return AutoTokenizer.from_pretrained(tiny)


def _digest(path) -> str:
    model = AutoModelForCausalLM.from_pretrained(path)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def test_init_is_deterministic_per_seed(tmp_path, tiny):
    a = init_tiny_model(tmp_path / "a", seed=0)
    c = init_tiny_model(tmp_path / "c", seed=1)
    assert (a / "tokenizer.json").read_text() == (tiny / "tokenizer.json").read_text()
    assert _digest(a) == _digest(tiny)
    assert _digest(a) != _digest(c)


def test_param_count_and_config(tiny, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert 1_000_000 <= count_parameters(model) <= 5_000_000
    assert model.config.model_type == "qwen2"
    assert model.config.tie_word_embeddings
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(tok)
    assert 2000 <= len(tok) <= 4096


def test_small_size_param_count(tmp_path):
    from agentrl.model import SIZES, build_tokenizer, model_config
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(model_config("small", build_tokenizer(SIZES["small"]["vocab"])))
    assert 20_000_000 <= count_parameters(model) <= 40_000_000


def test_special_tokens(tok):
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is not None
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1
        assert tok.convert_tokens_to_ids(t) in tok.all_special_ids


def test_tags_atomic_and_decode_as_text(tok):
    for tag in TAG_TOKENS:
        ids = tok.encode(f"x{tag}y", add_special_tokens=False)
        assert tag in tok.convert_ids_to_tokens(ids), tag
        assert tok.convert_tokens_to_ids(tag) not in tok.all_special_ids
    text = "<code>\n```python\nprint(1234 * 5678)\n```\n</code>\n<interpreter>\n7006652\n</interpreter>\n<answer>7006652</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text  # tags survive skip_special_tokens


def test_digits_are_single_tokens(tok):
    ids = tok.encode("7006652 and 1234*5678", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if p.strip().isdigit()] == list("7006652") + list("1234") + list("5678")
    assert all(len(p.strip()) == 1 for p in pieces if any(ch.isdigit() for ch in p))


def test_chat_template(tok):
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "What is 1234 * 5678?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(1)"}}}]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is 1234 * 5678?<|im_end|>\n")
    assert '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    tools = [{"type": "function", "function": {"name": "python", "description": "run code", "parameters": {}}}]
    with_tools = tok.apply_chat_template(msgs[:2], tools=tools, tokenize=False, add_generation_prompt=False)
    assert with_tools.startswith("<|im_start|>system\nS\n\n# Tools") and '"name": "python"' in with_tools
    assert not with_tools.endswith("<|im_start|>assistant\n")


def test_model_runs_forward(tiny, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny)
    ids = torch.tensor([tok.encode("What is 1234 * 5678?")])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_cli(tmp_path):
    from agentrl.cli import main

    assert main(["model", "init", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


@pytest.mark.parametrize("names, tool_calls", [(False, False), (True, False), (True, True)])
def test_copy_drill_loss_covers_repeat_and_closing_tag(tok, names, tool_calls):
    import random

    from agentrl.copy_pretraining import _second_copy_mask, copy_drill

    rng = random.Random(0)
    drills = [copy_drill(rng, names, tool_calls) for _ in range(64)]
    assert tool_calls == any('"arguments": {' in d for d in drills)
    enc = tok(drills, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = _second_copy_mask(enc.input_ids, tok)
    for row, m, text in zip(enc.input_ids.tolist(), mask.tolist(), drills):
        target = tok.decode([t for t, on in zip(row, m) if on])
        repeat = text.rsplit(">", 2)[-2].rsplit("<", 1)[0]  # text between the last tag pair
        assert target.startswith(repeat) and target.endswith(">") and target[len(repeat):].startswith("</")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copy_pretraining_teaches_copying(tmp_path, seed):
    from agentrl.copy_pretraining import copy_accuracy

    path = init_tiny_model(tmp_path / "m", seed=seed, pretrain_steps=600)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert copy_accuracy(model, tokenizer) >= 0.8  # random init: 0.0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_copy_pretraining_to_a_target_teaches_copying_made_up_names(tmp_path):
    """The search runs' recipe: names (sub-word pieces, no digits) copy from a question into
    <search> (seed 0: 0.03 at 600 steps, 0.72 at 1200, 0.91 at 1500; seed 2: 0.00 at 1500, so the
    recipe drills on until the target). From 1200 steps, so the drills must go on past them."""
    from agentrl.copy_pretraining import copy_accuracy, name_copy_accuracy

    path = init_tiny_model(tmp_path / "m", seed=0, pretrain_steps=1200, copy_names=True, copy_target=0.8)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert name_copy_accuracy(model, tokenizer) >= 0.8 and copy_accuracy(model, tokenizer) >= 0.8

