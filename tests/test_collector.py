"""The collector with the real tiny model, real envs and the real sandbox."""
import time

import gymnasium as gym
import pytest
import torch

from agentrl.batch import collate, load_trajectories, save_trajectories
from agentrl.collector import Collector, CollectorConfig
from agentrl.env import ToolEnv
from agentrl.engines.hf import HFEngine
from agentrl.losses import token_logprobs
from agentrl.model import cached_tiny_model
from agentrl.parsers import HermesParser, retool_parser
from agentrl.types import StopReason

TASKS = [{"id": f"t{i}", "question": f"What is {1000 + i} * 2?", "answer": str(2 * (1000 + i))} for i in range(4)]


class RecordingEngine:
    """The real HFEngine, remembering every prompt it was asked to continue."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.prompts = engine, engine.tokenizer, []

    def generate(self, prompts, sampling):
        self.prompts += [list(p) for p in prompts]
        return self.engine.generate(prompts, sampling)


class ScriptTool:
    """A real tool whose latency and output we choose."""

    name, description = "python", "test tool"
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}}

    def __init__(self, sleep_s=0.0, output="42", fail=False):
        self.sleep_s, self.output, self.fail = sleep_s, output, fail

    def call(self, arguments):
        time.sleep(self.sleep_s)
        if self.fail:
            raise RuntimeError("tool exploded")
        return self.output


class ScriptEnv(ToolEnv):
    def __init__(self, tool=None, parser=None, max_turns=3):
        super().__init__(TASKS, [tool or ScriptTool()], parser or retool_parser(), max_turns=max_turns)

    def build_prompt(self, task):
        return [{"role": "system", "content": "Use tools."}, {"role": "user", "content": task["question"]}]

    def score(self, answer, task):
        return {"correct": float(answer == task["answer"])}


class ForcedEngine:
    """Real tokenizer + real model log-probs, but the policy's text is a script: lets a test pin
    what the 'model' says (a call every turn, a flood of tokens) while keeping ids exact."""

    def __init__(self, hf, text):
        self.hf, self.tokenizer, self.text = hf, hf.tokenizer, text

    def generate(self, prompts, sampling):
        from agentrl.engines.base import Completion

        ids = self.tokenizer.encode(self.text, add_special_tokens=False)[: sampling.max_new_tokens]
        return [Completion(ids, [0.0] * len(ids), "stop") for _ in prompts]


@pytest.fixture(scope="module")
def tiny():
    path = cached_tiny_model()
    return HFEngine(path, num_threads=1)


def test_python_tool_masks_and_decoding_with_real_sandbox(tiny):
    forced = ForcedEngine(tiny, "<code>\n```python\nprint(6 * 7)\n```\n</code>")
    collector = Collector("agentrl/PythonTool-v0", forced, CollectorConfig(max_total_tokens=400), env_kwargs={"max_turns": 2})
    try:
        trajs = collector.collect(TASKS[:2], group_size=2)
    finally:
        collector.close()
    assert [t.group_id for t in trajs] == [0, 0, 1, 1]
    tok = tiny.tokenizer
    for t in trajs:
        assert "42" in t.turns[0].observation
        generated = [i for i, m in zip(t.input_ids, t.loss_mask) if m]
        expected = sum((tok.encode(turn.action, add_special_tokens=False) for turn in t.turns), [])
        assert generated == expected  # every generated token has mask 1, nothing else does
        observed = tok.decode([i for i, m in zip(t.input_ids[t.prompt_len:], t.loss_mask[t.prompt_len:]) if not m])
        assert observed == "".join(turn.observation for turn in t.turns)
        # the interleaved ids decode to exactly what model and environment produced, in order
        assert tok.decode(t.input_ids[t.prompt_len:]) == "".join(turn.action + turn.observation for turn in t.turns)
        assert t.stop_reason == StopReason.MAX_TURNS and len(t.turns) == 2


def test_logprobs_match_a_teacher_forced_forward_pass(tiny):
    gym.register("test/Script-v0", entry_point=ScriptEnv) if "test/Script-v0" not in gym.registry else None
    collector = Collector("test/Script-v0", tiny, CollectorConfig(max_new_tokens_per_turn=24, max_total_tokens=200, temperature=0.7))
    trajs = collector.collect(TASKS[:2], group_size=2, seed=3)
    collector.close()
    batch = collate(trajs, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = tiny.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    recomputed = token_logprobs(logits, batch["input_ids"], temperature=0.7)
    mask = batch["loss_mask"].bool()
    assert mask.sum() > 0
    assert torch.allclose(recomputed[mask], batch["old_logprobs"][mask], atol=1e-4)


def test_tool_calls_run_concurrently():
    env_fn = lambda: ScriptEnv(ScriptTool(sleep_s=0.1), max_turns=1)  # noqa: E731
    hf = HFEngine(cached_tiny_model(), num_threads=1)
    collector = Collector(env_fn, ForcedEngine(hf, "<code>x</code>"), CollectorConfig(tool_workers=16))
    collector.collect(TASKS[:1], group_size=16)  # warm the env pool
    start = time.perf_counter()
    trajs = collector.collect(TASKS[:1], group_size=16)
    elapsed = time.perf_counter() - start
    collector.close()
    assert all(t.n_tool_calls == 1 for t in trajs)
    assert elapsed < 16 * 0.1 / 2, f"16 calls of 100 ms took {elapsed:.2f}s: not concurrent"


def test_max_turns_max_tokens_and_failing_tool(tiny):
    hf = tiny
    never_answers = Collector(lambda: ScriptEnv(max_turns=3), ForcedEngine(hf, "<code>x</code>"), CollectorConfig())
    t = never_answers.collect(TASKS[:1])[0]
    assert t.stop_reason == StopReason.MAX_TURNS and len(t.turns) == 3 and not t.truncated

    flood = Collector(lambda: ScriptEnv(max_turns=50), ForcedEngine(hf, "blah " * 200), CollectorConfig(max_new_tokens_per_turn=64, max_total_tokens=160))
    t = flood.collect(TASKS[:1])[0]
    assert t.stop_reason == StopReason.MAX_TOKENS and t.truncated and len(t.input_ids) <= 160

    broken = Collector(lambda: ScriptEnv(ScriptTool(fail=True), max_turns=1), ForcedEngine(hf, "<code>x</code>"), CollectorConfig())
    t = broken.collect(TASKS[:1])[0]
    assert "Error: RuntimeError: tool exploded" in t.turns[0].observation
    for c in (never_answers, flood, broken):
        c.close()


def test_long_observations_are_truncated_with_a_marker(tiny):
    env_fn = lambda: ScriptEnv(ScriptTool(output="x" * 5000), max_turns=1)  # noqa: E731
    collector = Collector(env_fn, ForcedEngine(tiny, "<code>x</code>"), CollectorConfig(max_observation_tokens=40))
    t = collector.collect(TASKS[:1])[0]
    collector.close()
    assert t.turns[0].n_observation_tokens == 40
    assert "[observation truncated]" in tiny.tokenizer.decode(t.input_ids[t.prompt_len:])


def test_trajectories_round_trip_through_jsonl(tiny, tmp_path):
    collector = Collector(lambda: ScriptEnv(max_turns=1), ForcedEngine(tiny, "<answer>2000</answer>"), CollectorConfig())
    trajs = collector.collect(TASKS[:2])
    collector.close()
    save_trajectories(tmp_path / "r.jsonl", trajs)
    back = load_trajectories(tmp_path / "r.jsonl")
    assert back == trajs and back[0].reward == 1.0 and back[0].stop_reason == StopReason.ANSWER


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TOOLS = (
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Drops earlier <think> blocks from assistant history when re-rendered, as some reasoning
# models' templates do: re-rendering history would change the ids the model sampled.
THINK_DROPPING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{{ m['content'].split('</think>')[-1] }}<|im_end|>\n{% elif m['role'] == 'tool' %}<|im_start|>user\n"
    "<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("template", [CHATML_TOOLS, LLAMA3, THINK_DROPPING], ids=["chatml-tools", "llama3", "think-dropping"])
def test_ids_seen_by_trainer_equal_ids_sampled_under_any_template(template):
    hf = HFEngine(cached_tiny_model(), num_threads=1)
    hf.tokenizer.chat_template = template
    engine = RecordingEngine(ForcedEngine(hf, '<think>hmm</think><tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>'))
    collector = Collector(lambda: ScriptEnv(parser=HermesParser(), max_turns=3), engine, CollectorConfig(max_total_tokens=1000))
    t = collector.collect(TASKS[:1])[0]
    collector.close()
    assert len(engine.prompts) == 3
    for prompt, (start, end) in zip(engine.prompts, t.turn_spans):
        assert t.input_ids[:start] == prompt  # every turn continued exactly the ids the trainer sees
        assert all(t.loss_mask[start:end])
        assert sum(t.loss_mask[:start]) == sum(e - s for s, e in t.turn_spans if e <= start)
    # the tool turn is the template's own wrapping, with mask 0
    wrapped = hf.tokenizer.decode(t.input_ids[t.turn_spans[0][1]:t.turn_spans[1][0]])
    assert "42" in wrapped and sum(t.loss_mask[t.turn_spans[0][1]:t.turn_spans[1][0]]) == 0


def test_tool_latency_is_read_off_the_env_not_info(tiny):
    # info must be deterministic (gymnasium's check_env): the wall-clock latency is an env attribute
    collector = Collector(lambda: ScriptEnv(ScriptTool(sleep_s=0.05), max_turns=1), ForcedEngine(tiny, "<code>x</code>"), CollectorConfig())
    t = collector.collect(TASKS[:1])[0]
    collector.close()
    turn = t.turns[0]
    assert turn.tool_latency_s >= 0.05 and turn.calls == [{"name": "python", "arguments": {"code": "x"}}]
    assert not {"tool_latency_s", "tool_outputs", "tool_calls"} & set(turn.info)
