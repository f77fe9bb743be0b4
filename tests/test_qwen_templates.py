"""Hermes tool turns against the real Qwen2.5-Instruct and Qwen3 chat templates (fixtures), on the
project's tiny tokenizer: a turn ends at the <|im_end|> the model samples, every call in it runs,
each output is its own tool message, and the ids equal the template's own rendering."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from agentrl.collector import Collector, CollectorConfig, wrap_tool_observation
from agentrl.engines.base import Completion
from agentrl.engines.hf import HFEngine
from agentrl.env import ToolEnv
from agentrl.model import cached_tiny_model
from agentrl.parsers import HermesParser, retool_parser, search_r1_parser
from agentrl.types import StopReason

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
QWEN = ["qwen2.5-7b-instruct.jinja", "qwen3-8b.jinja"]
TASK = {"id": "t0", "question": "What are 6 * 7 and 2 + 2?", "answer": "42"}
CALLS = [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(6 * 7)"}}},
         {"type": "function", "function": {"name": "python", "arguments": {"code": "print(2 + 2)"}}}]


class EvalTool:
    """Deterministic stand-in for the interpreter: prints ``a + b`` / ``a * b``."""

    name, description = "python", "Execute Python code and return what it prints."
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}

    def call(self, arguments):
        a, op, b = arguments["code"].removeprefix("print(").removesuffix(")").split()
        return str(int(a) * int(b) if op == "*" else int(a) + int(b))


class QwenEnv(ToolEnv):
    def __init__(self, max_parallel_calls=4):
        super().__init__([TASK], [EvalTool()], HermesParser(max_parallel_calls=max_parallel_calls), max_turns=3)

    def build_prompt(self, task):
        return [{"role": "system", "content": "Use the python tool."}, {"role": "user", "content": task["question"]}]

    def score(self, answer, task):
        return {"correct": float(answer == task["answer"])}


class ScriptedLM(torch.nn.Module):
    """The tiny model's own forward (real KV cache), with its logits forced onto a script of ids:
    HFEngine's real decode loop then samples exactly what a Qwen model would say, EOS included."""

    def __init__(self, inner, script):
        super().__init__()
        self.inner, self.script, self.calls = inner, list(script), 0
        self.config = inner.config
        forward = functools.partial(ScriptedLM._forward, self)
        forward.__wrapped__ = inner.forward  # HFEngine reads the forward signature (cache argument name)
        self.forward = forward

    def _forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        forced = torch.full_like(out.logits, -1e4)
        forced[..., self.script[min(self.calls, len(self.script) - 1)]] = 0.0
        self.calls += 1
        out.logits = forced
        return out


@functools.lru_cache(maxsize=None)
def tiny_path() -> Path:
    return cached_tiny_model()


@pytest.fixture(scope="module")
def tiny_model():
    return HFEngine(tiny_path(), num_threads=1).model


def qwen_tokenizer(name: str):
    tok = AutoTokenizer.from_pretrained(tiny_path())
    tok.chat_template = (TEMPLATES / name).read_text()
    return tok


def two_call_turn(tok, content: str):
    """(prompt messages, tools, the template's text of the whole conversation up to the next
    generation prompt, the text the model writes for its two-call turn)."""
    env = QwenEnv()
    prompt, tools = env.build_prompt(TASK), env.tool_schemas
    convo = prompt + [{"role": "assistant", "content": content, "tool_calls": CALLS},
                      {"role": "tool", "content": "42"}, {"role": "tool", "content": "4"}]
    full = tok.apply_chat_template(convo, tools=tools, add_generation_prompt=True, tokenize=False)
    head = tok.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=False)
    assert full.startswith(head)
    return full, full[len(head): full.index("<|im_end|>", len(head))]


@pytest.mark.parametrize("template", QWEN)
def test_two_call_turn_matches_the_template(template, tiny_model):
    tok = qwen_tokenizer(template)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    full, said = two_call_turn(tok, "<think>\nTwo independent sums: run both at once.\n</think>\n\nRunning both.")
    assert said.count("<tool_call>") == 2
    turn1 = tok.encode(said, add_special_tokens=False) + [im_end]
    turn2 = tok.encode("<answer>42</answer>", add_special_tokens=False) + [im_end]
    engine = HFEngine(ScriptedLM(tiny_model, turn1 + turn2), tokenizer=tok,
                      eos_token_ids=[im_end, tok.convert_tokens_to_ids("<|endoftext|>")])
    collector = Collector(QwenEnv, engine, CollectorConfig(max_new_tokens_per_turn=512, max_total_tokens=4096,
                                                           max_observation_tokens=1024, temperature=1.0))
    try:
        t = collector.collect([TASK])[0]
    finally:
        collector.close()

    # The engine ran past both </tool_call> closers and stopped at the <|im_end|> it sampled.
    (s1, e1), (s2, e2) = t.turn_spans
    assert t.input_ids[s1:e1] == turn1 and all(t.loss_mask[s1:e1])
    assert [c["arguments"]["code"] for c in t.turns[0].calls] == ["print(6 * 7)", "print(2 + 2)"]
    # prompt + sampled + observation ids are exactly the template's rendering, one
    # <tool_response> per call, with the model's <|im_end|> not appended a second time.
    assert t.input_ids[:s2] == tok.encode(full, add_special_tokens=False)
    observed = tok.decode(t.input_ids[e1:s2], skip_special_tokens=False)
    assert observed.startswith("\n<|im_start|>user\n<tool_response>\n42\n</tool_response>\n<tool_response>\n4\n</tool_response>")
    assert sum(t.loss_mask[e1:s2]) == 0
    assert t.input_ids[s2:e2] == turn2 and t.stop_reason == StopReason.ANSWER and t.reward == 1.0


def test_the_template_end_of_turn_ends_the_turn_when_it_is_not_the_models_eos(tiny_model):
    # A base model (EOS <|endoftext|>) under a chat template: the collector passes <|im_end|> as a
    # stop token, so the turn still ends where the template ends an assistant turn.
    tok = qwen_tokenizer(QWEN[0])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    full, said = two_call_turn(tok, "")
    script = tok.encode(said, add_special_tokens=False) + [im_end] + tok.encode("<answer>42</answer>", add_special_tokens=False) + [im_end]
    engine = HFEngine(ScriptedLM(tiny_model, script), tokenizer=tok, eos_token_ids=[tok.convert_tokens_to_ids("<|endoftext|>")])
    collector = Collector(QwenEnv, engine, CollectorConfig(max_new_tokens_per_turn=512, max_total_tokens=4096,
                                                           max_observation_tokens=1024))
    t = collector.collect([TASK])[0]
    collector.close()
    (s1, e1), (s2, _) = t.turn_spans
    assert t.input_ids[e1 - 1] == im_end and t.loss_mask[e1 - 1] == 1 and len(t.turns[0].calls) == 2
    assert t.input_ids[:s2] == tok.encode(full, add_special_tokens=False)


@pytest.mark.parametrize("template", QWEN)
def test_a_turn_cut_before_its_end_token_gets_the_template_end_forced_in(template):
    tok = qwen_tokenizer(template)
    full, said = two_call_turn(tok, "")

    class NoEOS:  # a turn that ends without the model's <|im_end|> (length, or an engine that drops it)
        tokenizer = tok

        def generate(self, prompts, sampling):
            ids = tok.encode(said, add_special_tokens=False)
            return [Completion(ids, [0.0] * len(ids), "length") for _ in prompts]

    collector = Collector(QwenEnv, NoEOS(), CollectorConfig(max_new_tokens_per_turn=512, max_total_tokens=4096,
                                                            max_observation_tokens=1024))
    t = collector.collect([TASK])[0]
    collector.close()
    start, end = t.turn_spans[0]
    assert t.input_ids[: t.turn_spans[1][0]] == tok.encode(full, add_special_tokens=False)
    assert tok.decode(t.input_ids[end:end + 1], skip_special_tokens=False) == "<|im_end|>"
    assert t.loss_mask[end] == 0  # forced in, not sampled


@pytest.mark.parametrize("template", QWEN)
def test_one_tool_message_per_output(template):
    tok = qwen_tokenizer(template)
    text = wrap_tool_observation(tok, ["a", "b", "c"], turn_end="<|im_end|>")
    assert text == ("\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>"
                    "\n<tool_response>\nc\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert wrap_tool_observation(tok, "a").startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\na\n")


def test_calls_past_max_parallel_calls_are_reported_not_run():
    env = QwenEnv(max_parallel_calls=2)
    env.reset(seed=0)
    call = '<tool_call>\n{{"name": "python", "arguments": {{"code": "print({})"}}}}\n</tool_call>'
    obs, _, _, _, info = env.step("\n".join(call.format(e) for e in ("1 + 1", "2 + 2", "3 + 3")) + "<|im_end|>")
    assert [c["arguments"]["code"] for c in info["tool_calls"]] == ["print(1 + 1)", "print(2 + 2)"]
    assert info["tool_outputs"][:2] == ["2", "4"] and "ran the first 2 of 3" in info["tool_outputs"][2]
    assert info["n_invalid_calls"] == 1


def test_chat_format_has_no_stop_strings_tag_formats_keep_theirs():
    assert HermesParser().stop_strings == ()
    assert HermesParser(chat=False).stop_strings == ("</tool_call>", "</answer>")
    assert retool_parser().stop_strings == ("</code>", "</answer>")
    assert search_r1_parser().stop_strings == ("</search>", "</answer>")
    env = QwenEnv()
    env.reset(seed=0)
    obs, *_ = env.step("thinking out loud<|im_end|>")
    assert "no tool call or answer found" in obs and "</tool_call>" in obs  # feedback still names the closers

    seen = []

    class Recording:
        tokenizer = qwen_tokenizer(QWEN[0])

        def generate(self, prompts, sampling):
            seen.append((sampling.stop, sampling.stop_token_ids))
            ids = self.tokenizer.encode("<answer>42</answer>", add_special_tokens=False)
            return [Completion(ids, [0.0] * len(ids), "stop") for _ in prompts]

    class ReToolEnv(QwenEnv):
        def __init__(self):
            ToolEnv.__init__(self, [TASK], [EvalTool()], retool_parser(), max_turns=3)

    for env_fn in (QwenEnv, ReToolEnv):
        collector = Collector(env_fn, Recording(), CollectorConfig())
        collector.collect([TASK])
        collector.close()
    im_end = Recording.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert seen == [((), (im_end,)), (("</code>", "</answer>"), ())]  # tag formats: their closers, nothing more
