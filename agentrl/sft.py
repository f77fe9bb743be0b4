"""``agentrl sft CONFIG.yaml``: supervised warm start on tool-use traces (ReTool's cold start).

A trace is ``{"messages": [system?, user, assistant, tool, assistant, ...], "tools"?: [schemas]}``. It is tokenised
exactly as the collector builds a rollout: the prompt (messages before the first assistant
turn) rendered once by the chat template, then assistant text (loss mask 1) and tool
observations (loss mask 0) appended as ids. So SFT trains on the very sequences RL samples.
"""
from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from agentrl.collector import end_of_turn_id, render_prompt, wrap_tool_observation
from agentrl.config import ModelConfig, OptimConfig, RunConfig, _Strict
from agentrl.data import load_jsonl
from agentrl.losses import token_logprobs

log = logging.getLogger("agentrl.sft")


class SFTDataConfig(_Strict):
    path: str = "package:mul4_sft.jsonl"
    observation_format: Literal["text", "chat"] = "text"
    """``text``: tool messages appended as is (ReTool / Search-R1 tags); ``chat``: the template's tool turn
    (Hermes / Qwen), each assistant turn closed by the end-of-turn token it samples at rollout time."""
    limit: int | None = None
    max_tokens: int = Field(1024, ge=8)


class SFTConfig(_Strict):
    run: RunConfig = Field(default_factory=lambda: RunConfig(name="sft", output_dir="runs/sft", steps=100))
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: SFTDataConfig = Field(default_factory=SFTDataConfig)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-3, micro_batch_size=16))
    batch_size: int = Field(16, ge=1)
    save_to: str | None = None
    """Where the warm-started model is written (default: run.output_dir/model)."""


def encode_trace(tokenizer, messages: list[dict], observation_format: str = "text",
                 tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one trace, built the way the collector builds a rollout.

    ``tools``: the function schemas the env's prompt renders (a trace row's ``tools``, as in
    TRL's conversational datasets). ``chat``: each assistant turn ends with the end-of-turn
    token the model samples (``<|im_end|>``, loss mask 1, so the model learns to end a turn);
    each run of tool messages is one observation, the template's text up to the next
    generation prompt without that token (``collector.wrap_tool_observation``), loss mask 0."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise ValueError("trace has no assistant message")
    chat = observation_format == "chat"
    end_id = end_of_turn_id(tokenizer) if chat else None
    end_text = tokenizer.decode([end_id], skip_special_tokens=False) if end_id is not None else ""
    ids = render_prompt(tokenizer, messages[:first], tools)
    mask = [0] * len(ids)
    for role, run in itertools.groupby(messages[first:], key=lambda m: m["role"]):
        run = [m["content"] for m in run]
        if role == "assistant":
            if chat and len(run) > 1:
                raise ValueError("two assistant messages in a row: in the chat format a turn without a call "
                                 "is answered by the env's feedback, a tool message")
            parts = [tokenizer.encode(text, add_special_tokens=False) for text in run]
            if end_id is not None and parts[0][-1:] != [end_id]:
                parts[0].append(end_id)  # sampled by the model at rollout time: trained on
            bit = 1
        elif role == "tool":  # chat: one observation for the run (one tool message per call of the turn)
            texts = [wrap_tool_observation(tokenizer, run, turn_end=end_text)] if chat else run
            parts, bit = [tokenizer.encode(text, add_special_tokens=False) for text in texts], 0
        else:
            raise ValueError(f"unexpected {role!r} message after the first assistant turn")
        for part in parts:
            ids += part
            mask += [bit] * len(part)
    return ids, mask


def sft(cfg: SFTConfig) -> Path:
    from agentrl.batch import collate
    from agentrl.metrics import MetricsWriter, ProgressBar
    from agentrl.train_engine import TorchEngine
    from agentrl.trainer import _seed_everything, load_policy
    from agentrl.types import StopReason, Trajectory

    _seed_everything(cfg.run.seed)
    model, tokenizer = load_policy(cfg)
    rows = load_jsonl(cfg.data.path, limit=cfg.data.limit, require=("messages",))
    examples = []
    for i, row in enumerate(rows):
        try:
            ids, mask = encode_trace(tokenizer, row["messages"], cfg.data.observation_format, row.get("tools"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{cfg.data.path}: trace {i + 1}: {e}") from None
        ids, mask = ids[: cfg.data.max_tokens], mask[: cfg.data.max_tokens]
        examples.append(Trajectory(ids, mask, [0.0] * len(ids), 0, [], 0.0, {}, StopReason.ANSWER, False))
    engine = TorchEngine(model, cfg.optim, cfg.run.steps, autocast_bf16=cfg.model.dtype == "bfloat16")
    out = Path(cfg.run.output_dir)
    metrics = MetricsWriter.for_run(out, cfg.run, cfg.model_dump(mode="json"))
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
    model.train()
    with ProgressBar(cfg.run.steps, enabled=cfg.run.progress, description="sft") as bar:
        for step in range(cfg.run.steps):
            picks = [examples[order[(step * cfg.batch_size + j) % len(order)]] for j in range(cfg.batch_size)]
            loss = _sft_step(engine, collate(picks, tokenizer.pad_token_id), cfg.optim.micro_batch_size)
            norm = engine.step()
            record = {"sft/loss": loss, "sft/grad_norm": norm, "sft/lr": engine.lr}
            metrics.write(record, step + 1)
            bar.update(step + 1, {"reward/mean": -loss})
    metrics.close()
    model.eval()
    target = Path(cfg.save_to or out / "model")
    model.save_pretrained(target, state_dict=engine.policy_state_dict())  # model.lora: merged into a plain model
    tokenizer.save_pretrained(target)
    log.info("SFT done: final loss %.4f, model saved to %s", loss, target)
    return target


def _sft_step(engine, batch: dict, micro: int) -> float:
    """Token-mean negative log-likelihood over loss-mask-1 tokens, accumulated over micro-batches."""
    total = batch["loss_mask"].sum().clamp(min=1)
    value = 0.0
    for idx in torch.arange(batch["input_ids"].shape[0]).split(micro):
        ids, attn, mask = batch["input_ids"][idx], batch["attention_mask"][idx], batch["loss_mask"][idx]
        logprobs = token_logprobs(engine.forward(ids, attn), ids)
        loss = -(logprobs * mask).sum() / total
        engine.backward(loss)
        value += loss.item()
    if not math.isfinite(value):
        raise FloatingPointError("SFT loss is not finite")
    return value


def add_cli_args(parser) -> None:
    parser.add_argument("config", help="YAML, e.g. configs/retool_sft_tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")


def cli_main(args) -> int:
    from agentrl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides, schema=SFTConfig)
    except ConfigError as e:
        raise SystemExit(f"agentrl sft: {e}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sft(cfg)
    return 0
