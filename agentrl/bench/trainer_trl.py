"""The TRL side of ``agentrl bench trainer``: the same run through TRL's ``GRPOTrainer``, its
Python tool executing in agentrl's sandbox and its reward agentrl's answer check."""
from __future__ import annotations

import re
import time
from pathlib import Path

from agentrl.bench.trainer_common import TOOL_DOC, bench_tasks, peak_rss_mb, steady, system_prompt

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def _make_trl_tool():
    """A ``python(code)`` tool for TRL running code in agentrl's local sandbox, formatted exactly
    like agentrl's PythonTool output. Its schema (from the signature and docstring) equals
    agentrl's ``tool_schema(PythonTool)`` (no return annotation, so no extra ``return`` key)."""
    from agentrl.sandbox import make_sandbox
    from agentrl.tools import PythonTool

    sandbox = make_sandbox("local")

    def python(code: str):
        t = PythonTool(sandbox)
        try:
            return t.call({"code": code})
        finally:
            t.close()

    python.__doc__ = f"{TOOL_DOC}\n\nArgs:\n    code: Python source to run.\n"
    return python, sandbox


def _answer_text(completion) -> str | None:
    if isinstance(completion, list):
        text = "\n".join(m.get("content") or "" for m in completion if m.get("role") == "assistant" and isinstance(m.get("content"), str))
    else:
        text = str(completion)
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def correctness_reward(completions, answer, **kwargs) -> list[float]:
    """TRL reward: 1.0 when the text inside the last <answer>...</answer> equals the gold answer."""
    from agentrl.rewards import math_equal

    return [float(math_equal(_answer_text(c), str(a))) for c, a in zip(completions, answer)]


def worker_trl(spec: dict, workdir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(spec["threads"])
    tool = spec["variant"] == "tool"
    notes: list[str] = []
    P, G = spec["prompts_per_step"], spec["group_size"]
    system = system_prompt(spec["variant"])
    rows = [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": t["question"]}],
             "answer": str(t["answer"])} for t in bench_tasks()]
    dataset = Dataset.from_list(rows)

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tools, sandbox = None, None
    if tool:
        from trl.chat_template_utils import qwen3_template

        # agentrl's tiny tokenizer has its own Qwen2.5-style ChatML template, which TRL's
        # add_response_schema does not recognise: give it TRL's Hermes/Qwen response template.
        tokenizer.response_template = qwen3_template
        notes.append("TRL tool parsing: tokenizer.response_template set to trl.chat_template_utils.qwen3_template "
                     "(agentrl's ChatML template is not in TRL's known-template list)")
        python_tool, sandbox = _make_trl_tool()
        tools = [python_tool]
    max_completion = spec["max_new_tokens"] * (spec["max_turns"] if tool else 1)
    config = dict(
        output_dir=str(Path(workdir) / "trl"), use_cpu=True, report_to="none", bf16=False, fp16=False,
        num_generations=G, per_device_train_batch_size=P * G, gradient_accumulation_steps=1,
        max_completion_length=max_completion, beta=0.0, num_iterations=1, learning_rate=spec["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        temperature=1.0, top_p=1.0, top_k=0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        scale_rewards="group", mask_truncated_completions=True, logging_steps=1, max_steps=spec["steps"],
        save_strategy="no", seed=spec["seed"], disable_tqdm=True, dataloader_num_workers=0, use_vllm=False,
        gradient_checkpointing=spec.get("gradient_checkpointing", True),
    )
    if tool:
        config["max_tool_calling_iterations"] = spec["max_turns"] - 1
    args = GRPOConfig(**config)

    step_tokens: list[float] = []
    pending = {"tokens": 0.0, "episodes": 0}

    class CountingGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            out = super()._generate(prompts)
            completion_ids, tool_mask = out[1], out[2]
            if tool_mask is not None:
                pending["tokens"] += float(sum(sum(m) for m in tool_mask))
            else:
                pending["tokens"] += float(sum(len(c) for c in completion_ids))
            pending["episodes"] += len(completion_ids)
            return out

    step_s: list[float] = []
    cpu_s: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - self.t)
            cpu_s.append(time.process_time() - self.c)
            step_tokens.append(pending["tokens"])
            pending["tokens"] = 0.0

    trainer = CountingGRPOTrainer(model=model, reward_funcs=correctness_reward, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, tools=tools, callbacks=[StepTimer()])
    startup = time.perf_counter() - t0
    try:
        trainer.train()
    finally:
        if sandbox is not None:
            sandbox.close()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    s_per_step, tps = steady(step_s, step_tokens)
    n = max(1, len(logs))
    return {
        "ok": True, "startup_s": startup, "step_s": step_s, "tokens": step_tokens, "s_per_step": s_per_step,
        "cpu_s": cpu_s, "cpu_s_per_step": steady(cpu_s, cpu_s)[0],
        "first_step_s": step_s[0], "tokens_per_s": tps,
        "gen_tokens_per_episode": sum(step_tokens) / max(1, pending["episodes"]),
        "tool_calls_per_episode": sum(h.get("tools/call_frequency", 0.0) for h in logs) / n,
        "reward_mean": sum(h.get("reward", 0.0) for h in logs) / n,
        "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(), "notes": notes,
    }
