"""``agentrl bench trainer``: pure helpers (fast) and a real 2-step run of both frameworks (slow)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from agentrl.bench import trainer as bt
from agentrl.bench import trainer_common as common
from agentrl.bench.trainer_trl import correctness_reward


def test_correctness_reward_reads_last_answer_of_any_assistant_message():
    completions = [
        [{"role": "assistant", "content": "so <answer>6</answer>"}],
        [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]},
         {"role": "tool", "name": "python", "content": "<answer>6</answer>"},  # tool text is not an answer
         {"role": "assistant", "content": "<answer>7</answer>"}],
        [{"role": "assistant", "content": "no answer"}],
        "plain <answer> 6.0 </answer>",
    ]
    assert correctness_reward(completions, ["6", "6", "6", "6"]) == [1.0, 0.0, 0.0, 1.0]


def test_steady_drops_the_warmup_step():
    assert common.steady([10.0, 2.0, 2.0], [100, 40, 60]) == (2.0, 25.0)
    assert common.steady([3.0], [30]) == (3.0, 10.0)


def test_trl_tool_schema_equals_agentrl_tool_schema():
    from transformers.utils import get_json_schema

    fn = lambda code: code  # noqa: E731  (only the signature and docstring matter)
    def python(code: str):
        return fn(code)

    python.__doc__ = f"{common.TOOL_DOC}\n\nArgs:\n    code: Python source to run.\n"
    assert get_json_schema(python) == common.python_tool_schema()


def test_hermes_trace_is_a_valid_tool_conversation():
    from transformers import AutoTokenizer

    from agentrl.model import cached_tiny_model

    tok = AutoTokenizer.from_pretrained(cached_tiny_model())
    task = common.bench_tasks(limit=1)[0]
    text = tok.apply_chat_template(common.hermes_trace(task), tools=[common.python_tool_schema()], tokenize=False)
    assert f'"arguments": {{"code": "print({task["a"]} * {task["b"]})"}}' in text
    assert f"<tool_response>\n{task['answer']}\n</tool_response>" in text
    assert text.rstrip().endswith(f"<answer>{task['answer']}</answer><|im_end|>")


def test_warm_start_loss_with_the_shared_prefix_equals_the_padded_batch():
    """The warm start computes the traces' common prefix once (its KV cache repeated over the
    batch): the loss and every parameter's gradient must be the padded batch's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.model import cached_tiny_model
    from agentrl.prefix_sharing import common_prefix_length

    path = cached_tiny_model("tiny")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    tools = [common.python_tool_schema()]
    seqs = []
    for task in common.bench_tasks(limit=4):
        msgs = common.hermes_trace(task)
        prompt = tok.apply_chat_template(msgs[:2], tools=tools, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
        seqs.append((tok.encode(full, add_special_tokens=False), len(tok.encode(prompt, add_special_tokens=False))))
    seqs[1] = (seqs[1][0][:-3], seqs[1][1])  # unequal lengths: padding on the right
    assert common_prefix_length([s for s, _ in seqs]) > 200  # the system prompt and the tool schema

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    W = max(len(s) for s, _ in seqs)
    ids = torch.full((4, W), tok.pad_token_id)
    labels = torch.full((4, W), -100)
    att = torch.zeros((4, W), dtype=torch.long)
    for r, (s, p) in enumerate(seqs):
        ids[r, :len(s)], att[r, :len(s)], labels[r, p:len(s)] = torch.tensor(s), 1, torch.tensor(s[p:])
    padded = model(input_ids=ids, attention_mask=att, labels=labels).loss
    g_padded = grads(padded)
    shared = common.shared_prefix_sft_loss(model, seqs, tok.pad_token_id)
    g_shared = grads(shared)
    assert shared.item() == pytest.approx(padded.item(), rel=1e-5)
    assert torch.allclose(g_shared, g_padded, rtol=1e-4, atol=1e-6)


def test_warm_start_lr_defaults_by_size_and_an_explicit_one_wins():
    import argparse

    parser = argparse.ArgumentParser()
    bt.add_cli_args(parser)
    assert bt._warm_lr(parser.parse_args([])) == 3e-3
    assert bt._warm_lr(parser.parse_args(["--size", "small"])) == 1e-3
    assert bt._warm_lr(parser.parse_args(["--model", "some/dir"])) == 1e-3
    assert parser.parse_args(["--warm-start-lr", "5e-4"]).warm_start_lr == 5e-4


def test_ratios_and_verdict():
    results = [
        {"ok": True, "variant": "single", "framework": "agentrl", "s_per_step": 1.0, "tokens_per_s": 200.0,
         "peak_rss_mb": 500.0, "cpu_s_per_step": 1.0},
        {"ok": True, "variant": "single", "framework": "trl", "s_per_step": 2.0, "tokens_per_s": 100.0,
         "peak_rss_mb": 1000.0, "cpu_s_per_step": 2.0},
        {"ok": False, "variant": "tool", "framework": "trl", "error": "x"},
    ]
    r = bt._ratios(results)
    assert set(r) == {"single"} and set(r["single"]) == {"agentrl"}
    x = r["single"]["agentrl"]
    assert x["s_per_step_over_trl"] == 0.5 and x["meets_time_target"] and x["target_s_per_step_over_trl"] == 1.0
    assert x["peak_memory_over_trl"] == 0.5 and x["peak_memory_measure"] == "peak_rss_mb"


def test_async_is_held_to_0_6x_trl_and_memory_compares_whole_trees_when_both_have_them():
    trl = {"ok": True, "variant": "tool", "framework": "trl", "s_per_step": 10.0, "tokens_per_s": 1.0,
           "peak_rss_mb": 1000.0, "peak_tree_pss_mb": 1100.0, "cpu_s_per_step": 10.0}
    fast = {**trl, "framework": "agentrl_async", "s_per_step": 5.9, "peak_rss_mb": 600.0, "peak_tree_pss_mb": 1200.0}
    r = bt._ratios([trl, fast, {**fast, "framework": "agentrl", "s_per_step": 7.0}])["tool"]
    assert r["agentrl_async"]["meets_time_target"] and r["agentrl"]["meets_time_target"]  # 0.59 <= 0.6; 0.7 <= 1.0
    assert r["agentrl_async"]["peak_memory_measure"] == "peak_tree_pss_mb"  # not the trainer's own RSS (0.6x)
    assert not r["agentrl_async"]["meets_memory_target"]
    assert not bt._ratios([trl, {**fast, "s_per_step": 6.1}])["tool"]["agentrl_async"]["meets_time_target"]


def test_async_ratios_put_agentrl_async_against_agentrl_sync():
    results = [
        {"ok": True, "variant": "single", "framework": "agentrl", "s_per_step": 2.0, "tokens_per_s": 100.0},
        {"ok": True, "variant": "single", "framework": "agentrl_async", "s_per_step": 1.5, "tokens_per_s": 150.0},
        {"ok": True, "variant": "tool", "framework": "agentrl_async", "s_per_step": 1.0, "tokens_per_s": 1.0},
    ]
    r = bt._async_ratios(results)
    assert set(r) == {"single"}  # the tool variant has no sync run to compare with
    assert r["single"] == {"s_per_step_async_over_sync": 0.75, "tokens_per_s_async_over_sync": 1.5}
    assert bt._ratios(results) == {}  # no TRL run: no TRL ratio


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (pip install -r bench-requirements.txt)")
def test_bench_trainer_cli_runs_both_frameworks(tmp_path):
    """2 steps of 2x2 completions, single-turn, both frameworks in subprocesses (~1 min on CPU)."""
    from agentrl.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "trainer", "--steps", "2", "--group-size", "2", "--prompts-per-step", "2",
               "--max-new-tokens", "8", "--variants", "single", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report
    by = {r["framework"]: r for r in report["results"]}
    assert set(by) == {"agentrl", "trl"}
    for r in by.values():
        assert r["ok"] and len(r["step_s"]) == 2 and r["s_per_step"] > 0 and r["peak_rss_mb"] > 50
        assert r["peak_tree_pss_mb"] > 50 and r["peak_tree_processes"] >= 1
        assert 0 < r["gen_tokens_per_episode"] <= 8
        assert r["torch_threads"] == 1
    assert report["ratios"]["single"]["agentrl"]["s_per_step_over_trl"] > 0


def test_tree_memory_counts_a_child_process_and_its_pages_once(tmp_path):
    """A real child that holds 200 MB of its own: the tree's peak PSS grows by about that much."""
    import subprocess
    import sys

    from agentrl.bench.memory import TreeMemory

    code = "import time, sys; b = bytearray(200 * 2**20); sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(1.5)"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {code!r}])"])
    with TreeMemory(parent.pid, interval_s=0.05) as mem:
        parent.wait(timeout=60)
    assert mem.peak_processes == 2  # the parent and its child were both seen
    assert 200 <= mem.peak_mb < 200 + 2 * 60  # 200 MB + two small interpreters' private pages
