"""Rollout engines side by side on one batch: tokens/s of HFEngine, plain ``model.generate``
and (when vLLM is importable) VLLMEngine.

``bench_engines(model_dir)`` returns one dict per engine. vLLM spawns worker processes, so a
script calling this with ``include_vllm=True`` must guard its entry point with
``if __name__ == "__main__":``.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Any

from agentrl.engines.base import SamplingParams

QUESTIONS = [f"What is {1000 + 137 * i} * {9876 - 311 * i}?" for i in range(64)]


def bench_prompts(tokenizer, n_prompts: int) -> list[list[int]]:
    prompts = []
    for q in (QUESTIONS * (n_prompts // len(QUESTIONS) + 1))[:n_prompts]:
        msgs = [{"role": "user", "content": q}]
        try:
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        except Exception:  # no chat template
            text = q
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    return prompts


def _row(engine: str, n_tokens: int, seconds: float, n_seqs: int, **extra: Any) -> dict:
    return {
        "engine": engine,
        "sequences": n_seqs,
        "tokens": n_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(n_tokens / seconds, 1) if seconds > 0 else float("inf"),
        **extra,
    }


def bench_hf_generate(model, tokenizer, prompts, n_samples: int, max_new_tokens: int, num_threads: int | None = 1) -> dict:
    """``model.generate`` on the same left-padded batch (sampling, no EOS so lengths match)."""
    import torch

    from agentrl.engines.hf import torch_threads

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch_threads(num_threads), torch.inference_mode():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            num_return_sequences=n_samples,
            pad_token_id=pad,
            output_scores=True,
            return_dict_in_generate=True,
        )
        dt = time.perf_counter() - t0
    n_tokens = int(out.sequences[:, width:].numel())
    return _row("hf model.generate", n_tokens, dt, len(prompts) * n_samples)


def _best_of(engine, prompts, sp: SamplingParams, repeats: int):
    """One warm-up call, then the fastest of ``repeats`` timed calls: (seconds, completions)."""
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=4))
    best, outs = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = engine.generate(prompts, sp)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, outs


def bench_engines(
    model_dir: str,
    n_prompts: int = 8,
    n_samples: int = 4,
    max_new_tokens: int = 128,
    include_vllm: bool | None = None,
    num_threads: int = 1,
    repeats: int = 2,
) -> list[dict]:
    """Tokens/s of each engine on ``n_prompts`` prompts x ``n_samples`` samples.

    EOS is disabled (``max_new_tokens`` for every sequence) so every engine does the same work;
    each engine gets one warm-up call and the best of ``repeats`` timed calls is reported.
    """
    from transformers import AutoTokenizer

    from agentrl.engines.hf import HFEngine

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = bench_prompts(tokenizer, n_prompts)
    sp = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, n=n_samples, seed=0)
    rows = []

    engine = HFEngine(model_dir, tokenizer=tokenizer, num_threads=num_threads, batch_size=max(64, n_prompts * n_samples))
    engine.eos_ids = set()  # same work as the other engines: always max_new_tokens
    best, outs = _best_of(engine, prompts, sp, repeats)
    rows.append(_row("HFEngine", sum(len(c.token_ids) for c in outs), best, len(outs)))

    model = engine.model
    bench_hf_generate(model, tokenizer, prompts[:1], 1, 4, num_threads)
    gen_rows = [bench_hf_generate(model, tokenizer, prompts, n_samples, max_new_tokens, num_threads) for _ in range(repeats)]
    rows.append(min(gen_rows, key=lambda r: r["seconds"]))
    del engine, model

    if include_vllm is None:
        include_vllm = importlib.util.find_spec("vllm") is not None
    if include_vllm:
        from agentrl.engines.vllm import VLLMEngine

        t_load = time.perf_counter()
        v = VLLMEngine(model_dir, enforce_eager=True, seed=0, ignore_eos=True)
        load_s = time.perf_counter() - t_load
        best, outs = _best_of(v, prompts, sp, repeats)
        rows.append(_row("VLLMEngine", sum(len(c.token_ids) for c in outs), best, len(outs), load_s=round(load_s, 1)))
        v.close()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'engine':<20} {'seqs':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}"]
    for r in rows:
        lines.append(f"{r['engine']:<20} {r['sequences']:>5} {r['tokens']:>7} {r['seconds']:>8.3f} {r['tokens_per_s']:>9.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="model dir (default: the cached tiny model)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--no-vllm", action="store_true")
    a = ap.parse_args()
    if a.model is None:
        from agentrl.model import cached_tiny_model

        a.model = str(cached_tiny_model())
    print(format_table(bench_engines(a.model, a.prompts, a.samples, a.max_new_tokens, include_vllm=False if a.no_vllm else None)))
