"""One forward over a group's shared prompt instead of one per sample (``optim.share_prefix``).

GRPO samples G completions of every prompt, and a tool-use prompt (system prompt, tool schemas,
the task) is most of each sequence: in ``agentrl bench trainer``'s tool variant, 306 of ~400
tokens. Computing log-probs the usual way runs the model over the prompt G times. Here, as in
Prefix Grouper (arXiv:2506.05433), the sequences of a micro-batch that begin with the same
prompt are packed into one row, ``[prompt | completion 1 | completion 2 | ...]``, with a 4-D
attention mask (each completion sees the prompt and itself, causally; never another
completion) and position ids that restart every completion where the prompt ends, so each
token gets exactly the hidden state it would get in its own sequence (to float rounding, tested),
and gradients from every completion flow into the one prompt pass.

"The same prompt": the tokens before a sequence's first trained token (``loss_mask``), equal
token for token. A row is closed before it grows past twice the micro-batch's longest sequence,
and the packing is used only when it costs less than the padded batch (positions for the linear
layers, plus attention scores, quadratic in the row). Needs an attention that
takes a 4-D mask: ``sdpa`` (boolean mask) and ``eager`` (additive); others (flash-attention)
run the sequences as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass
class Packed:
    input_ids: Tensor  # [R, L]
    attention_mask: Tensor  # [R, 1, L, L]: bool (sdpa) or additive float (eager)
    position_ids: Tensor  # [R, L]
    row: Tensor  # [B, T]: the packed row of each original position (-1: not packed, padding)
    col: Tensor  # [B, T]: its column there


def _cost(rows: int, width: int) -> float:
    """What a padded ``[rows, width]`` forward costs, roughly: the linear layers per position,
    plus the attention scores, per position ~ width / 1024 of that (a small model's ratio;
    larger models' attention weighs less, so this errs towards not packing)."""
    return rows * width * (1.0 + width / 1024)


def common_prefix_length(seqs) -> int:
    """How many leading tokens all of ``seqs`` (sequences of token ids) share."""
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return n


def attention_kind(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def prompt_keys(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> list[tuple[int, bytes]]:
    """Per sequence: its prompt (the tokens before its first trained one) as a hashable key
    ``(length, tokens)``."""
    trained = loss_mask.bool()
    first = torch.where(trained.any(1), trained.int().argmax(1), attention_mask.sum(1)).tolist()
    ids = input_ids.cpu()
    return [(p, ids[b, :p].numpy().tobytes()) for b, p in enumerate(first)]


def group_order(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> list[int]:
    """Row order that keeps the sequences of a prompt together (so a micro-batch holds whole
    groups to pack), groups with the longest sequences first, longest first within a group."""
    keys = prompt_keys(input_ids, attention_mask, loss_mask)
    lengths = attention_mask.sum(1).tolist()
    longest: dict = {}
    for k, n in zip(keys, lengths):
        longest[k] = max(longest.get(k, 0), n)
    rank = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return sorted(range(len(keys)), key=lambda b: (-longest[keys[b]], rank[keys[b]], -lengths[b]))


def pack_shared_prefixes(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                         attention: str = "sdpa", dtype: torch.dtype = torch.float32) -> Packed | None:
    """The packed micro-batch, or None when it would not be cheaper (no two sequences share a
    prompt, or the completions are long against the prompt)."""
    B, T = input_ids.shape
    if (loss_mask.bool() & ~attention_mask.bool()).any():  # a trained position outside its sequence
        return None
    lengths = attention_mask.sum(1).tolist()
    keys = prompt_keys(input_ids, attention_mask, loss_mask)
    ids_cpu = input_ids.cpu()
    groups: dict[tuple[int, bytes], list[int]] = {}
    for b, key in enumerate(keys):
        groups.setdefault(key, []).append(b)
    if all(len(members) == 1 for members in groups.values()):
        return None
    rows: list[tuple[int, int, list[int]]] = []  # (source of the prefix, prefix length, members)
    cap = 2 * max(lengths)
    for (p, _), members in groups.items():
        current, size = [], p
        for b in members:
            extra = lengths[b] - p
            if current and size + extra > cap:
                rows.append((current[0], p, current))
                current, size = [], p
            current.append(b)
            size += extra
        rows.append((current[0], p, current))
    L = max(p + sum(lengths[b] - p for b in members) for _, p, members in rows)
    R = len(rows)
    if _cost(R, L) >= _cost(B, max(lengths)):
        return None
    device = input_ids.device
    packed = torch.zeros(R, L, dtype=input_ids.dtype)
    positions = torch.zeros(R, L, dtype=torch.long)
    allowed = torch.zeros(R, L, L, dtype=torch.bool)
    row_of = torch.full((B, T), -1, dtype=torch.long)
    col_of = torch.zeros(B, T, dtype=torch.long)
    for r, (src, p, members) in enumerate(rows):
        packed[r, :p] = ids_cpu[src, :p]
        positions[r, :p] = torch.arange(p)
        allowed[r, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        start = p
        for b in members:
            n = lengths[b] - p
            end = start + n
            packed[r, start:end] = ids_cpu[b, p:lengths[b]]
            positions[r, start:end] = torch.arange(p, lengths[b])
            allowed[r, start:end, :p] = True
            allowed[r, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            row_of[b, :lengths[b]] = r
            col_of[b, :p] = torch.arange(p)
            col_of[b, p:lengths[b]] = torch.arange(start, end)
            start = end
        pad = torch.arange(start, L)
        allowed[r, pad, pad] = True  # padding sees itself: no all-masked row (NaN in softmax and its backward)
    mask = allowed[:, None]
    if attention == "eager":  # eager attention adds its mask to the scores
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return Packed(packed.to(device), mask.to(device), positions.to(device), row_of.to(device), col_of.to(device))
