"""The rollout-engine seam: token ids in, sampled token ids with log-probs out.

Engines never see text prompts: the collector renders the prompt once and appends ids, so the
trainer sees exactly the ids that were sampled (no re-tokenisation drift).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    """Stop strings (the tag formats' closers and ``</answer>``); the stop string is kept in the
    output. Chat formats pass none: their turn ends at the EOS / end-of-turn token the model
    samples, which engines keep in ``token_ids`` (the collector then does not append it again)."""
    n: int = 1
    """Samples per prompt."""
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    """Ids that end a sequence as EOS does (kept in the output, ``finish_reason`` "eos"), besides
    the engine's own EOS ids: the collector passes the chat template's end-of-turn token
    (``<|im_end|>``) for chat formats, so a model whose EOS is another token still ends its turn."""


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    """Log-probability of each sampled token under the sampling distribution's model (T=1 logits
    scaled by the temperature, as the trainer recomputes them)."""
    finish_reason: str
    """``stop`` (a stop string), ``eos`` or ``length``."""
    stop_string: str | None = None
    prompt_index: int = 0
    extras: dict = field(default_factory=dict)


class RolloutEngine(Protocol):
    tokenizer: object

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``len(prompts) * sampling.n`` completions; prompt i's samples are at ``i*n .. i*n+n-1``."""
        ...

    def update_weights(self, state_dict: dict) -> None:
        """Load new policy weights (after an optimiser step) without restarting the engine."""
        ...
