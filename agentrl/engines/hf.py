"""``HFEngine``: batched sampling with a transformers causal LM and our own decode loop.

The loop (rather than ``model.generate``) returns exactly what RL needs: the sampled ids, the
log-prob of each sampled token as the trainer recomputes it (``log_softmax(logits / T)`` over the
full vocabulary, before top-k / top-p truncation), and why each sequence stopped.

* Prompts are left-padded with an attention mask and explicit position ids; each distinct prompt
  is prefilled once and its KV cache repeated for the ``n`` samples.
* Finished sequences are dropped from the batch (and the KV cache), so compute follows the
  live sequences only.
* Stop strings are checked on the decoded last few tokens of each live sequence; the stop
  string is kept in the output (its whole final token is kept). A sequence also ends at an EOS
  id or one of ``SamplingParams.stop_token_ids`` (kept, ``finish_reason`` "eos"): chat formats
  end a turn there, at the end-of-turn token the model samples.
* On CPU, generation runs with ``num_threads`` torch threads (default 1): with the default
  OpenMP threads, any other load on the machine makes small-model decoding many times slower.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable

import torch

from agentrl.engines.base import Completion, SamplingParams

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "auto": None,
}


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (process-wide; restored on exit)."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_eos_ids(model, tokenizer) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models list several)."""
    ids: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return ids


def _forward_params(model) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {"past_key_values"}


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask logits outside the top-k / nucleus (top-p) set with -inf (rows independent)."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Remove a token when the mass before it already reaches top_p (the top token always stays).
        remove_sorted = (probs.cumsum(-1) - probs) >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


class HFEngine:
    """Rollout engine over a transformers ``PreTrainedModel``.

    ``model_or_path``: a model directory / hub id, or an already-loaded model (then pass its
    ``tokenizer``, or it is loaded from ``model.name_or_path``). When the trainer shares its policy
    module with the engine, :meth:`update_weights` is a no-op.

    ``share_prefix``: the prefill computes what the prompts of a batch have in common once, as
    vLLM's prefix caching does: identical prompts (a GRPO group's first turn) are prefilled once,
    and the longest prefix all prompts share (the system prompt and tool schemas: 290 of the
    ~330 tokens of ``agentrl bench trainer``'s tool prompts) once for the batch, its KV cache
    repeated over the rows. The same completions to float rounding (tested); off: every prompt
    prefilled in full.
    """

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        device: str | torch.device = "cpu",
        dtype: Any = torch.float32,
        num_threads: int | None = None,
        batch_size: int = 64,
        stop_check_tokens: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
        trust_remote_code: bool = False,
        share_prefix: bool = True,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

        self.device = torch.device(device)
        torch_dtype = resolve_dtype(dtype)
        if isinstance(model_or_path, (str, Path)):
            path = str(model_or_path)
            kwargs = {"trust_remote_code": trust_remote_code}
            if torch_dtype is not None:
                kwargs["dtype"] = torch_dtype
            self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(self.device)
            self.model.eval()
            self.model_path: str | None = path
        elif isinstance(model_or_path, (PreTrainedModel, torch.nn.Module)):
            self.model = model_or_path  # shared: never moved, cast or switched to eval here
            self.model_path = getattr(model_or_path, "name_or_path", None) or None
            self.device = next(model_or_path.parameters()).device
        else:
            raise TypeError(f"HFEngine takes a model path or a PreTrainedModel, not {type(model_or_path).__name__}")
        if tokenizer is None:
            if not self.model_path:
                raise ValueError("pass tokenizer= with an already-loaded model that has no name_or_path")
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        elif isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self.num_threads = (1 if self.device.type == "cpu" else None) if num_threads is None else num_threads
        self.batch_size = max(1, int(batch_size))
        self.stop_check_tokens = stop_check_tokens
        self.eos_ids = set(eos_token_ids) if eos_token_ids is not None else default_eos_ids(self.model, tokenizer)
        self._fwd_params = _forward_params(self.model)
        self._stop_masks: dict[tuple, torch.Tensor] = {}
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.share_prefix = share_prefix

    # ------------------------------------------------------------------ weights
    def update_weights(self, state_dict: Any) -> None:
        """Load new weights: a no-op for the shared module itself, else ``load_state_dict``."""
        if state_dict is self.model or isinstance(state_dict, torch.nn.Module):
            if state_dict is not self.model:
                self.model.load_state_dict(state_dict.state_dict())
            return
        own = self.model.state_dict()
        if all(k in own and own[k].data_ptr() == v.data_ptr() for k, v in state_dict.items()):
            return  # the very tensors of this module: nothing to copy
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise ValueError(f"update_weights: unexpected keys {sorted(unexpected)[:5]}")
        # Tied output embeddings are absent from most state dicts; anything else missing is a bug.
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if real_missing:
            raise ValueError(f"update_weights: missing keys {real_missing[:5]}")

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], sampling: SamplingParams | None = None) -> list[Completion]:
        sampling = sampling or SamplingParams()
        n = max(1, int(sampling.n))
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("HFEngine.generate: empty prompt (give at least one token id)")
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(sampling.seed))
        results: list[Completion | None] = [None] * (len(prompts) * n)
        # Similar lengths together keeps padding low; chunk so that prompts * n <= batch_size.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_chunk = max(1, self.batch_size // n)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch_threads(self.num_threads), torch.inference_mode():
                for start in range(0, len(order), per_chunk):
                    idx = order[start : start + per_chunk]
                    outs = self._generate_chunk([prompts[i] for i in idx], n, sampling, gen)
                    for j, i in enumerate(idx):
                        for s in range(n):
                            c = outs[j * n + s]
                            c.prompt_index = i
                            results[i * n + s] = c
        finally:
            if was_training:
                self.model.train()
        return results  # type: ignore[return-value]

    def _stop_window(self, stops: tuple[str, ...]) -> int:
        if self.stop_check_tokens:
            return self.stop_check_tokens
        # A token decodes to >= 1 character almost always; a little slack covers byte pieces.
        return max(len(s) for s in stops) + 4

    def _stop_candidates(self, stops: tuple[str, ...], vocab: int) -> torch.Tensor:
        """Bool mask over ids: tokens whose text could complete a stop string (it must contain
        the stop string's last character; byte pieces of a UTF-8 character always qualify)."""
        key = (stops, vocab)
        if key not in self._stop_masks:
            lasts = {s[-1] for s in stops}
            n = min(len(self.tokenizer), vocab)
            texts = self.tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
            mask = torch.ones(vocab, dtype=torch.bool)
            mask[:n] = torch.tensor([("\ufffd" in t) or any(c in t for c in lasts) for t in texts], dtype=torch.bool)
            self._stop_masks = {key: mask}  # one stop set at a time
        return self._stop_masks[key]

    @property
    def _cache_kw(self) -> str:
        # transformers >= 5.2x names the argument ``cache``; older versions ``past_key_values``.
        return "cache" if "cache" in self._fwd_params else "past_key_values"

    def _prefill(self, prompts: list[list[int]]):
        """The prompts' KV cache, last-position logits, attention mask and next position ids.

        Rows are left-padded to end together. With ``share_prefix``, identical prompts are
        computed once (their rows copied after), and the prefix every distinct prompt shares
        (but for each one's last token, whose logits are needed) once for the batch: the rows
        are then ``[shared prefix | padding | own suffix]``, the padding masked out and the
        suffix positioned after the prefix, so every token sees and is seen as in its own row."""
        from transformers import DynamicCache

        from agentrl.prefix_sharing import common_prefix_length

        model, dev = self.model, self.device
        unique = list(dict.fromkeys(map(tuple, prompts))) if self.share_prefix else [tuple(p) for p in prompts]
        shared = 0
        if self.share_prefix and len(unique) > 1:  # each prompt keeps its last token: its logits are needed
            shared = min(common_prefix_length(unique), min(len(p) for p in unique) - 1)
        if shared < 16:  # too short to pay for a second forward
            shared = 0
        cache = DynamicCache(config=getattr(model, "config", None))
        extra = {"logits_to_keep": 1} if "logits_to_keep" in self._fwd_params else {}
        if shared:
            prefix = torch.tensor([unique[0][:shared]], dtype=torch.long, device=dev)
            model(input_ids=prefix, position_ids=torch.arange(shared, device=dev)[None], use_cache=True,
                  **{self._cache_kw: cache}, **extra)
            cache.batch_repeat_interleave(len(unique))
        width = max(len(p) for p in unique) - shared
        ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long)
        own = torch.zeros((len(unique), width), dtype=torch.long)
        for b, p in enumerate(unique):
            ids[b, width - (len(p) - shared):] = torch.tensor(p[shared:], dtype=torch.long)
            own[b, width - (len(p) - shared):] = 1
        ids, own = ids.to(dev), own.to(dev)
        pos = shared + (own.cumsum(-1) - 1).clamp_min(0)
        mask = torch.cat([own.new_ones((len(unique), shared)), own], dim=1)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    **{self._cache_kw: cache}, **extra)
        logits, next_pos = out.logits[:, -1, :], pos[:, -1] + 1
        del out
        if len(unique) < len(prompts):  # identical prompts: copy their row
            row = {p: i for i, p in enumerate(unique)}
            index = torch.tensor([row[tuple(p)] for p in prompts], dtype=torch.long, device=dev)
            cache.batch_select_indices(index)
            logits, mask, next_pos = logits[index], mask[index], next_pos[index]
        return cache, logits, mask, next_pos

    def _generate_chunk(
        self, prompts: list[list[int]], n: int, sp: SamplingParams, gen: torch.Generator | None
    ) -> list[Completion]:
        model, dev = self.model, self.device
        B = len(prompts)
        cache, logits, mask, next_pos = self._prefill(prompts)
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            next_pos = next_pos.repeat_interleave(n, dim=0)
        cache_kw = self._cache_kw
        total = B * n

        greedy = sp.temperature is None or sp.temperature <= 0
        temp = 1.0 if greedy else float(sp.temperature)
        stops = tuple(s for s in sp.stop if s)
        window = self._stop_window(stops) if stops else 0
        cand = self._stop_candidates(stops, logits.shape[-1]).to(dev) if stops else None
        eos_ids = self.eos_ids | set(getattr(sp, "stop_token_ids", ()) or ())
        eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=dev) if eos_ids else None

        toks: list[list[int]] = [[] for _ in range(total)]
        lps: list[list[float]] = [[] for _ in range(total)]
        finish: list[str | None] = [None] * total
        stop_hit: list[str | None] = [None] * total
        alive = list(range(total))  # row r of the live batch is sequence alive[r]
        max_new = int(sp.max_new_tokens)

        for step in range(max_new):
            scaled = logits.float()
            if temp != 1.0:
                scaled = scaled / temp
            logp = torch.log_softmax(scaled, dim=-1)
            if greedy:
                nxt = scaled.argmax(-1)
            else:
                filt = filter_logits(scaled, sp.top_k, sp.top_p) if (sp.top_k or sp.top_p < 1.0) else scaled
                # Exponential race (= Gumbel-max): argmax(p / E), E ~ Exp(1), samples from p and
                # is several times faster than torch.multinomial on CPU.
                probs = filt.softmax(-1)
                noise = torch.empty_like(probs).exponential_(1.0, generator=gen)
                nxt = (probs / noise).argmax(-1)
            chosen = logp.gather(-1, nxt[:, None]).squeeze(-1)
            nxt_l, chosen_l = nxt.tolist(), chosen.tolist()
            is_eos = torch.isin(nxt, eos).tolist() if eos is not None else [False] * len(alive)
            maybe_stop = cand[nxt].tolist() if stops else None
            keep: list[int] = []
            check_rows: list[int] = []
            for r, seq in enumerate(alive):
                toks[seq].append(nxt_l[r])
                lps[seq].append(chosen_l[r])
                if is_eos[r]:
                    finish[seq] = "eos"
                elif stops and maybe_stop[r]:
                    check_rows.append(r)
            if stops and check_rows:
                tails = self.tokenizer.batch_decode([toks[alive[r]][-window:] for r in check_rows], skip_special_tokens=False)
                for r, text in zip(check_rows, tails):
                    for s in stops:
                        if s in text:
                            finish[alive[r]], stop_hit[alive[r]] = "stop", s
                            break
            for r, seq in enumerate(alive):
                if finish[seq] is None:
                    keep.append(r)
            if not keep or step == max_new - 1:
                break
            if len(keep) < len(alive):
                keep_t = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(keep_t)
                mask, next_pos, nxt = mask[keep_t], next_pos[keep_t], nxt[keep_t]
                alive = [alive[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            out = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                use_cache=True,
                **{cache_kw: cache},
            )
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
            del out

        comps = []
        for seq in range(total):
            comps.append(
                Completion(
                    token_ids=toks[seq],
                    logprobs=lps[seq],
                    finish_reason=finish[seq] or "length",
                    stop_string=stop_hit[seq],
                )
            )
        return comps

