"""Log-probs and entropy of the trained tokens, without ever holding ``B x T x V`` logits.

The loss needs the policy's distribution only at positions whose *next* token is trained on
(loss mask 1): not at prompt or tool-observation positions, and not at padding. So the model
body runs once over the batch, the hidden states at those positions are gathered into one
``[N, H]`` matrix, and the LM head is applied to chunks of ``chunk_tokens`` rows. Under autograd
each chunk is checkpointed: its ``[chunk, V]`` logits are recomputed in backward instead of being
kept, so peak memory is ``O(chunk x V)`` whatever ``B``, ``T`` and ``V`` are (a 150k-token
vocabulary at T = 8k would otherwise need tens of GB per sequence).

A model is anything with the two halves of a causal LM (:class:`ModelParts`): ``hidden(ids,
attention_mask) -> [B, T, H]`` (the body, final norm included) and ``head(h) -> logits``.
Train engines provide them (with their autocast / DeepSpeed wrapping); :class:`CausalLMParts`
wraps a plain Hugging Face model (the frozen reference).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from agentrl.prefix_sharing import pack_shared_prefixes

DEFAULT_CHUNK_TOKENS = 1024


class ModelParts(Protocol):
    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor: ...

    def head(self, hidden: Tensor) -> Tensor: ...


class CausalLMParts:
    """:class:`ModelParts` of a Hugging Face ``*ForCausalLM`` (body = ``model.<base_model_prefix>``,
    head = ``get_output_embeddings()``), optionally under bf16 autocast."""

    def __init__(self, model: torch.nn.Module, autocast_bf16: bool = False):
        self.model = model
        self.body = getattr(model, model.base_model_prefix)
        self.lm_head = model.get_output_embeddings()
        self.autocast_bf16 = autocast_bf16

    def _autocast(self):
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        with self._autocast():
            return self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).last_hidden_state

    def head(self, hidden: Tensor) -> Tensor:
        with self._autocast():
            return self.lm_head(hidden)


def _chunk_stats(head, h: Tensor, targets: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor]:
    z = head(h).float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    # H = logsumexp(z) - sum_v softmax(z)_v z_v (the identity verl uses)
    return logp, lse - (torch.softmax(z, dim=-1) * z).sum(-1)


def trained_token_stats(
    model: ModelParts,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS,
    attention: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs [B, T], entropy [B, T] or None)``, float32 and aligned with ``input_ids``:

        logprobs[b, t] = log_softmax(logits[b, t-1] / temperature)[input_ids[b, t]]
        entropy[b, t]  = H(softmax(logits[b, t-1] / temperature))

    at the positions where ``loss_mask[b, t]`` is 1, and exactly 0 elsewhere (never computed).
    The temperature is the sampling temperature, so the ratio and the entropy are of the
    distribution that generated the tokens. Gradients flow into both outputs when grad is enabled
    (so an entropy bonus reaches the weights).

    ``chunk_tokens=None``: the head runs exactly once, on all N rows, without checkpointing
    (``[N, V]`` logits, still only at trained positions). Under ZeRO-3 every head call gathers
    the head's partitioned weight, a collective: ranks holding different numbers of trained tokens
    would make different numbers of chunked calls and deadlock, so partitioned engines use this.

    ``attention`` (the model's attention implementation, ``sdpa`` or ``eager``): sequences that
    begin with the same prompt run as one packed row, the prompt computed once
    (:mod:`agentrl.prefix_sharing`); None runs every sequence as it is.
    """
    B, T = input_ids.shape
    logp_out = torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)
    ent_out = torch.zeros_like(logp_out) if with_entropy else None
    rows, cols = loss_mask[:, 1:].to(input_ids.device).bool().nonzero(as_tuple=True)  # predicting token cols+1
    packed = pack_shared_prefixes(input_ids, attention_mask, loss_mask, attention) if attention else None
    if packed is None:
        hidden = model.hidden(input_ids, attention_mask)
        selected = hidden[rows, cols]  # [N, H]
    else:
        hidden = model.hidden(packed.input_ids, packed.attention_mask, packed.position_ids)
        selected = hidden[packed.row[rows, cols], packed.col[rows, cols]]
    targets = input_ids[rows, cols + 1]
    if chunk_tokens is None:  # one head call, even on zero rows: see the docstring
        pieces = [_chunk_stats(model.head, selected, targets, temperature, with_entropy)]
    else:
        grad = torch.is_grad_enabled()
        pieces = []
        for s in range(0, selected.shape[0], chunk_tokens):
            args = (model.head, selected[s:s + chunk_tokens], targets[s:s + chunk_tokens], temperature, with_entropy)
            pieces.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if grad else _chunk_stats(*args))
    if not pieces:  # nothing to train on: keep the graph connected, a backward on this loss must still run
        return logp_out + 0.0 * hidden.float().sum(), ent_out
    index = (rows, cols + 1)
    logp_out = logp_out.index_put(index, torch.cat([p[0] for p in pieces]))
    if with_entropy:
        ent_out = ent_out.index_put(index, torch.cat([p[1] for p in pieces]))
    return logp_out, ent_out


def full_logits_token_stats(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                            temperature: float = 1.0, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """The same quantities the naive way: the model's full ``[B, T, V]`` logits, kept for backward.
    The reference :func:`trained_token_stats` is tested against, and the baseline of
    ``agentrl bench update``."""
    from agentrl.losses import entropy_from_logits, token_logprobs

    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    mask = loss_mask.bool()
    logp = torch.where(mask, token_logprobs(logits, input_ids, temperature), 0.0)
    if not with_entropy:
        return logp, None
    z = logits / temperature if temperature != 1.0 else logits
    ent = torch.nn.functional.pad(entropy_from_logits(z)[:, :-1], (1, 0))
    return logp, torch.where(mask, ent, 0.0)
