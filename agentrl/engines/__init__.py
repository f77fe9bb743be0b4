"""Rollout engines: ``hf`` (transformers, the CPU default), ``vllm`` and ``openai`` (HTTP)."""
from agentrl.engines.base import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams", "make_engine"]


def make_engine(kind: str, model: str, **options) -> RolloutEngine:
    if kind == "hf":
        from agentrl.engines.hf import HFEngine

        return HFEngine(model, **options)
    if kind == "vllm":
        from agentrl.engines.vllm import VLLMEngine

        return VLLMEngine(model, **options)
    if kind == "openai":
        from agentrl.engines.openai import OpenAIEngine

        return OpenAIEngine(model, **options)
    raise ValueError(f"unknown engine {kind!r}; choose hf, vllm or openai")
