"""LoRA adapters through peft (``model.lora: {r, alpha, dropout, target_modules}``).

The adapters are injected into the policy module in place (``peft.inject_adapter_in_model``),
so the trainer, the train engines (``CausalLMParts``, DeepSpeed's ``hidden``/``head``) and a
shared HF rollout engine keep working on the very same ``*ForCausalLM`` object: the shared HF
engine generates with base + adapter, nothing to push. What changes with LoRA:

* **Trained / checkpointed.** peft marks only the adapter weights trainable; the engines give the
  optimiser only ``requires_grad`` parameters, and checkpoints hold the adapter (peft's format:
  ``adapter_config.json`` + ``adapter_model.safetensors``, so ``PeftModel.from_pretrained(base,
  step_dir)`` loads one) plus the optimiser over the adapter.
* **Reference.** With ``kl_coef > 0`` the KL reference is the policy's own forward with the
  adapters switched off (:class:`ReferenceParts`), as TRL does (huggingface/trl
  ``trl/trainer/grpo_trainer.py``: "peft case: we just need to disable the adapter", ``with
  self.model.disable_adapter():``) and verl's ``ref_in_actor`` (volcengine/verl
  ``verl/trainer/ppo/ray_trainer.py``: "the reference policy will be actor without lora
  applied"): no second copy of the weights.
* **Rollout engines that hold their own weights** (vLLM, the ZeRO-3 HF copy) get merged
  weights, ``W + (alpha / r) B A`` under the base model's names (:func:`merged_state_dict`).
  TRL's ``_move_model_to_vllm`` merges in place (``merge_adapter()``, ``state_dict()``,
  ``unmerge_adapter()``, then strips ``base_model.model.`` / ``.base_layer``); here the merge is
  computed out of place from the state dict, so the base weights never take the
  merge-unmerge rounding and ZeRO-3's gathered state dict is merged the same way.

The option names follow verl (``lora_rank``, ``lora_alpha``, ``target_modules: all-linear``;
volcengine/verl ``docs/advance/ppo_lora.rst``) and peft's ``LoraConfig``. peft is imported only
when a run asks for LoRA.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

ADAPTER = "default"  # peft's adapter name; one adapter per policy
PEFT_PREFIX = "base_model.model."  # keys in peft's saved format are relative to the PeftModel
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def peft_config(settings):
    """peft's ``LoraConfig`` for the run's ``model.lora`` (:class:`agentrl.config.LoraSettings`)."""
    from peft import LoraConfig

    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, bias="none", task_type="CAUSAL_LM")


def add_adapters(model: torch.nn.Module, settings) -> torch.nn.Module:
    """Inject fresh adapters into ``model`` in place (B = 0: the policy starts as the base model)
    and freeze everything else; returns ``model``."""
    from peft import inject_adapter_in_model

    config = peft_config(settings)
    config.base_model_name_or_path = getattr(model, "name_or_path", None)
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as e:  # e.g. target modules not found in the base model
        raise ValueError(f"model.lora: {e}") from None
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = model.get_output_embeddings()
    if isinstance(head, BaseTunerLayer) and getattr(model.config, "tie_word_embeddings", False):
        raise ValueError("model.lora.target_modules adapts the LM head, whose weight is tied to the input "
                         "embeddings: the merged weights could not be pushed consistently. Leave the head out")
    return model


def has_adapters(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def _tuner_layers(model: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model for the duration: what ``PeftModel.disable_adapter()`` does (its
    ``LoraModel.disable_adapter_layers`` toggles every tuner layer), for the bare module."""
    layers = [m for m in _tuner_layers(model) if not m.disable_adapters]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)  # also restores requires_grad on the adapter weights


class ReferenceParts:
    """The KL reference as :class:`agentrl.logprobs.ModelParts`: the policy's own ``parts``
    (the train engine: its autocast / DeepSpeed placement) run with the adapters off."""

    def __init__(self, parts, model: torch.nn.Module):
        self.parts, self.model = parts, model

    def hidden(self, input_ids, attention_mask, position_ids=None):
        with adapters_disabled(self.model):
            return self.parts.hidden(input_ids, attention_mask, position_ids)

    def head(self, hidden):
        with adapters_disabled(self.model):
            return self.parts.head(hidden)


def _scaling(config) -> float:
    # peft's LoraLayer.update_layer: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA
    return config.lora_alpha / (config.r ** 0.5 if config.use_rslora else config.r)


def merged_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the adapted ``model`` as a plain model's: ``x.base_layer.weight``
    becomes ``x.weight`` + the adapter's delta (peft's ``LoraLayer.get_delta_weight``: B @ A x
    scaling, transposed for ``fan_in_fan_out`` layers), the adapter tensors are dropped. Out of
    place: the model's weights are untouched."""
    config = model.peft_config[ADAPTER]
    scale = _scaling(config)
    out = {k.replace(".base_layer.", "."): v for k, v in state_dict.items() if ".lora_" not in k}
    suffix_a = f".lora_A.{ADAPTER}.weight"
    with torch.no_grad():
        for key, a in state_dict.items():
            if not key.endswith(suffix_a):
                continue
            prefix = key[: -len(suffix_a)]
            b = state_dict[f"{prefix}.lora_B.{ADAPTER}.weight"]
            delta = (b.float() @ a.float()) * scale
            if config.fan_in_fan_out:
                delta = delta.T
            base = out[f"{prefix}.weight"]
            out[f"{prefix}.weight"] = (base.float() + delta.to(base.device)).to(base.dtype)
    return out


def adapter_state_dict(model: torch.nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's saved format (keys as ``PeftModel.save_pretrained`` writes)."""
    from peft import get_peft_model_state_dict

    weights = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER,
                                        save_embedding_layers=False)
    return {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in weights.items()}


def save_adapters(model: torch.nn.Module, directory: Path, state_dict: dict | None = None) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into ``directory`` (``state_dict``:
    the full weights when the module's own are partitioned)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, state_dict), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    model.peft_config[ADAPTER].save_pretrained(str(directory))


def load_adapters(model: torch.nn.Module, directory: Path) -> None:
    """Load adapter weights saved by :func:`save_adapters` into ``model``'s adapters (same
    ``model.lora`` settings: a different rank or target set is an error, not a partial load)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    directory = Path(directory)
    file = directory / WEIGHTS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}: not a LoRA checkpoint (was the run "
                                "started without model.lora?)")
    saved = json.loads((directory / CONFIG_NAME).read_text())
    config = model.peft_config[ADAPTER]
    for key, ours in (("r", config.r), ("lora_alpha", config.lora_alpha)):
        if saved.get(key) != ours:
            raise ValueError(f"{directory}: adapter {key} is {saved.get(key)}, the run's model.lora has {ours}")
    weights = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(file)).items()}
    if {PEFT_PREFIX + k for k in weights} != set(adapter_state_dict(model)):
        raise ValueError(f"{directory}: the adapter's modules differ from the run's model.lora.target_modules")
    result = set_peft_model_state_dict(model, weights, adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"{directory}: unexpected adapter keys {sorted(result.unexpected_keys)[:5]}")


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
