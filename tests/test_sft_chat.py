"""SFT in the chat format trains exactly the tokens the collector samples: a Hermes trace encodes
to the ids and loss mask of the rollout a scripted policy makes through the real
``agentrl/ToolUse-v0`` (real sandbox, real BM25), and to the chat template's own rendering; the
``<|im_end|>`` closing each assistant turn has loss mask 1."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import agentrl  # noqa: F401  (registers the shipped envs)
from agentrl.collector import Collector, CollectorConfig
from agentrl.config import load_config
from agentrl.data import load_jsonl
from agentrl.engines.hf import HFEngine
from agentrl.sft import SFTConfig, encode_trace, sft
from test_qwen_templates import ScriptedLM, tiny_model, tiny_path  # noqa: F401 (tiny_model: a fixture)

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


def tokenizer(template: str):
    tok = AutoTokenizer.from_pretrained(tiny_path())
    if template != "tiny":
        tok.chat_template = (TEMPLATES / template).read_text()
    return tok


def shipped_trace(n_messages: int) -> dict:
    """A warm-start trace of agentrl.data.make_tooluse (7 messages: search, python, answer)."""
    return next(r for r in load_jsonl("package:kb_tooluse_sft.jsonl.gz") if len(r["messages"]) == n_messages)


def rollout(tok, model, trace: dict):
    """The collector's trajectory of a policy that says the trace's assistant turns."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    said = [m["content"] for m in trace["messages"] if m["role"] == "assistant"]
    script = [i for s in said for i in tok.encode(s, add_special_tokens=False) + [im_end]]
    answer = said[-1].removeprefix("<answer>").removesuffix("</answer>")
    task = {"id": trace["id"], "kind": trace["kind"], "question": trace["messages"][1]["content"], "answers": [answer]}
    engine = HFEngine(ScriptedLM(model, script), tokenizer=tok, eos_token_ids=[im_end])
    collector = Collector("agentrl/ToolUse-v0", engine, CollectorConfig(max_new_tokens_per_turn=128, max_total_tokens=2048,
                                                                         max_observation_tokens=512), env_kwargs={"topk": 1})
    try:
        return collector.collect([task])[0]
    finally:
        collector.close()


@pytest.mark.parametrize("template", ["tiny", "qwen2.5-7b-instruct.jinja"])
def test_a_hermes_trace_encodes_to_the_collectors_rollout(template, tiny_model):
    tok = tokenizer(template)
    trace = shipped_trace(7)
    t = rollout(tok, tiny_model, trace)
    assert t.reward == 1.0 and t.reward_components["_right_tools"] == 1.0
    # the shipped trace holds what the real tools return
    assert [turn.observation for turn in t.turns[:-1]] == [m["content"] for m in trace["messages"] if m["role"] == "tool"]

    ids, mask = encode_trace(tok, trace["messages"], "chat", trace["tools"])
    assert ids == t.input_ids and mask == t.loss_mask

    # ... which is the template's own rendering of the conversation (up to its final newline)
    full = tok.apply_chat_template(trace["messages"], tools=trace["tools"], tokenize=False)
    assert full.endswith("<|im_end|>\n") and ids == tok.encode(full[:-1], add_special_tokens=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # the role of the turn each <|im_end|> closes, and its loss mask
    closes = [(tok.decode(ids[:i], skip_special_tokens=False).rsplit("<|im_start|>", 1)[1].split("\n", 1)[0], mask[i])
              for i, x in enumerate(ids) if x == im_end]
    assert closes == [("system", 0), ("user", 0), ("assistant", 1), ("user", 0), ("assistant", 1), ("user", 0), ("assistant", 1)]


def test_consecutive_tool_messages_are_one_observation():
    tok = tokenizer("qwen2.5-7b-instruct.jinja")
    calls = "\n".join('<tool_call>\n' + json.dumps({"name": "python", "arguments": {"code": f"print({e})"}}) + '\n</tool_call>'
                      for e in ("6 * 7", "2 + 2"))
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "6 * 7 and 2 + 2?"},
                {"role": "assistant", "content": calls}, {"role": "tool", "content": "42"}, {"role": "tool", "content": "4"},
                {"role": "assistant", "content": "<answer>42</answer>"}]
    ids, mask = encode_trace(tok, messages, "chat")
    full = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok.encode(full[:-1], add_special_tokens=False)
    assert "</tool_response>\n<tool_response>" in tok.decode(ids)  # one user turn, two responses


def test_chat_rejects_two_assistant_turns_in_a_row_and_text_is_unchanged():
    tok = tokenizer("tiny")
    two = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="two assistant messages in a row"):
        encode_trace(tok, two, "chat")
    trace = load_jsonl("package:mul2_sft.jsonl", limit=1)[0]["messages"]  # ReTool tags: appended as is, no <|im_end|>
    ids, mask = encode_trace(tok, trace, "text")
    prompt = tok.encode(tok.apply_chat_template(trace[:2], add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    rest = [tok.encode(m["content"], add_special_tokens=False) for m in trace[2:]]
    assert ids == prompt + [i for part in rest for i in part]
    assert mask == [0] * len(prompt) + [int(m["role"] == "assistant") for m, part in zip(trace[2:], rest) for _ in part]


def test_sft_on_the_tooluse_traces_lowers_the_loss(tmp_path):
    cfg = load_config("configs/tooluse_sft_tiny_cpu.yaml", [
        f"model.path={tiny_path()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}", "run.steps=8",
        "run.progress=false", "run.tensorboard=false", f"save_to={tmp_path / 'model'}", "batch_size=4",
        "optim.micro_batch_size=4", "optim.warmup_steps=0"], schema=SFTConfig)
    sft(cfg)
    losses = [json.loads(x)["sft/loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
