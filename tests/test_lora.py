"""LoRA through peft (``model.lora``), for real: the tiny model, the PythonTool env and sandbox.

Only the adapters train and are checkpointed (resume is bit-identical), the base weights never
move, the KL reference is the base model (adapters off, no copy), and rollout engines see the
trained policy: the shared HF engine generates with the adapters, an engine holding its own
weights gets merged ones that reproduce the trainer's log-probs.
"""
import pytest

pytest.importorskip("peft")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from agentrl import lora  # noqa: E402
from agentrl.config import ConfigError, LoraSettings  # noqa: E402
from agentrl.logprobs import CausalLMParts  # noqa: E402
from agentrl.model import cached_tiny_model  # noqa: E402
from test_trainer import run, tiny_cfg  # noqa: E402

LORA = "model.lora={r: 4, alpha: 8}"
# The tiny model's rewards are all 0 on this task (no advantage signal): an entropy bonus gives
# every step a gradient, a high LR makes the adapters move visibly in two steps.
MOVING = ("algorithm.entropy_coef=0.01", "optim.lr=1e-2")


def base_model():
    return AutoModelForCausalLM.from_pretrained(cached_tiny_model(), dtype=torch.float32).eval()


def randomise_adapters(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 at init: the adapted model would equal the base
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


IDS = torch.tensor([[5, 17, 29, 3, 88, 41, 7, 2]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


# -- the adapters ------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [2, 8])
@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["down_proj"], "all-linear"])
def test_trainable_parameters_are_r_times_fan_in_plus_fan_out_per_target_module(r, targets):
    model = base_model()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lora.add_adapters(model, LoraSettings(r=r, target_modules=targets))
    if targets == "all-linear":  # peft's all-linear: every linear layer but the output head
        chosen = [m for n, m in linears.items() if n != "lm_head"]
    else:
        chosen = [m for n, m in linears.items() if n.split(".")[-1] in targets]
    # A: r x d_in, B: d_out x r
    assert lora.trainable_parameters(model) == sum(r * (m.in_features + m.out_features) for m in chosen)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    assert adapted == {n for n, m in linears.items() if m in chosen}


def test_fresh_adapters_are_the_base_model_and_disabling_them_gives_it_back():
    model = lora.add_adapters(base_model(), LoraSettings(r=4))
    assert torch.equal(logits(model), logits(base_model()))  # B = 0
    randomise_adapters(model)
    adapted = logits(model)
    assert (adapted - logits(base_model())).abs().max() > 0.1
    with lora.adapters_disabled(model):
        assert torch.equal(logits(model), logits(base_model()))
    assert torch.equal(logits(model), adapted)  # switched back on
    assert lora.trainable_parameters(model) > 0  # and trainable again


def test_merged_weights_are_a_plain_model_that_equals_base_plus_adapter_and_peft_merge():
    from peft import PeftModel

    model = lora.add_adapters(base_model(), LoraSettings(r=4, alpha=16, target_modules=["q_proj", "up_proj"]))
    randomise_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = lora.merged_state_dict(model.state_dict(), model)
    plain = base_model()
    assert set(merged) == set(plain.state_dict())  # the base model's names, no adapter tensors
    plain.load_state_dict(merged)
    assert torch.allclose(logits(plain), logits(model), atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # out of place
    # peft's own merge of the same adapter (saved in peft's format, loaded by PeftModel) agrees
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        lora.save_adapters(model, d)
        peft_merged = PeftModel.from_pretrained(base_model(), d).merge_and_unload().state_dict()
    for k, v in merged.items():
        assert torch.allclose(v, peft_merged[k], atol=1e-6), k


def test_lora_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="model.lora.rank"):
        tiny_cfg(tmp_path, "model.lora={rank: 4}")
    with pytest.raises(ConfigError, match="model.lora.r"):
        tiny_cfg(tmp_path, "model.lora={r: 0}")
    from agentrl.trainer import GRPOTrainer

    with pytest.raises(ValueError, match="model.lora: .*nope_proj"):
        GRPOTrainer(tiny_cfg(tmp_path, "model.lora={target_modules: [nope_proj]}"))
    with pytest.raises(ValueError, match="tied"):
        lora.add_adapters(base_model(), LoraSettings(target_modules=["lm_head"]))


# -- training ----------------------------------------------------------------------------------
def test_lora_sft_saves_a_plain_model_with_the_adapter_merged(tmp_path):
    from agentrl.config import load_config
    from agentrl.sft import SFTConfig, sft

    cfg = load_config("configs/retool_sft_tiny_cpu.yaml", [
        f"model.path={cached_tiny_model()}", "model.init_if_missing=null", f"run.output_dir={tmp_path}",
        "run.steps=4", "run.progress=false", "run.tensorboard=false", f"save_to={tmp_path / 'model'}",
        "batch_size=4", "optim.lr=1e-2", LORA], schema=SFTConfig)
    saved, info = AutoModelForCausalLM.from_pretrained(sft(cfg), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # a plain model's weights
    saved.eval()
    assert (logits(saved) - logits(base_model())).abs().max() > 1e-3  # the adapter is in it


def test_lora_training_moves_only_the_adapters_and_checkpoints_only_them(tmp_path):
    from peft import PeftModel

    history, trainer = run(tiny_cfg(tmp_path, "run.steps=2", "run.save_every=2", LORA, *MOVING))
    model = trainer.model
    optimised = [p for g in trainer.engine.optimizer.param_groups for p in g["params"]]
    assert sum(p.numel() for p in optimised) == lora.trainable_parameters(model) < 0.05 * model.num_parameters()
    base = base_model().state_dict()
    state = model.state_dict()
    for k, v in state.items():
        if ".lora_" not in k:  # x.base_layer.weight is x.weight of the base model, bit for bit
            assert torch.equal(v, base[k.replace(".base_layer.", ".")]), k
    moved = [k for k, v in state.items() if ".lora_B." in k and v.abs().max() > 0]
    assert len(moved) == sum(".lora_B." in k for k in state)  # every adapter left B = 0
    assert all(r["train/grad_norm"] > 0 for r in history)
    step = tmp_path / "checkpoints" / "step_00000002"
    files = {p.name for p in step.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    assert not any(f.startswith("model") and f.endswith(".safetensors") for f in files)  # no base copy
    assert (step / "adapter_model.safetensors").stat().st_size < 0.1 * (cached_tiny_model() / "model.safetensors").stat().st_size
    # peft's own loader reads the checkpoint: the same policy
    reloaded = PeftModel.from_pretrained(base_model(), step).eval()
    assert torch.allclose(logits(reloaded), logits(model.eval()), atol=1e-5)
    # and so does transformers' (adapter_config.json names the base): agentrl eval takes the step dir
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(step).eval()), logits(model), atol=1e-5)


def test_lora_resume_gives_the_same_losses(tmp_path):
    args = (LORA, "run.save_every=2", *MOVING)
    full, _ = run(tiny_cfg(tmp_path / "a", "run.steps=3", *args))
    first, _ = run(tiny_cfg(tmp_path / "b", "run.steps=2", *args))
    rest, _ = run(tiny_cfg(tmp_path / "b", "run.steps=3", *args), resume=True)
    assert len(rest) == 1  # bit-identical: the same adapter, optimiser state, samples and gradients
    for key in ("train/loss", "train/grad_norm", "train/entropy", "reward/mean"):
        assert [r[key] for r in first + rest] == [r[key] for r in full], key


def test_reference_is_the_base_model_with_adapters_off_and_engines_see_the_adapters(tmp_path):
    from agentrl.batch import collate
    from agentrl.engines.base import SamplingParams
    from agentrl.engines.hf import HFEngine
    from agentrl.policy_update import no_grad_logprobs

    from agentrl.trainer import GRPOTrainer

    trainer = GRPOTrainer(tiny_cfg(tmp_path, "run.steps=2", LORA, "algorithm.kl_coef=0.1", *MOVING))
    try:
        history = trainer.train()
        trajs = trainer.collector.collect(trainer.tasks[:2], 2, seed=123)
    finally:
        trainer.close()
    assert isinstance(trainer.ref, lora.ReferenceParts)  # no second model
    assert history[1]["train/kl"] > 0  # the adapters moved the policy away from the base
    # the shared HF engine sampled step 2 with the adapters of step 1: its log-probs are the trainer's
    assert history[1]["mismatch/abs_logp_diff_max"] < 1e-4
    batch = collate(trajs, trainer.tokenizer.pad_token_id)

    def lp(parts):
        return no_grad_logprobs(parts, batch, 8, 1, 1.0, torch.device("cpu"), None)

    mask = batch["loss_mask"].bool()
    reference, policy = lp(trainer.ref), lp(trainer.engine)
    assert torch.allclose(reference[mask], lp(CausalLMParts(base_model()))[mask], atol=1e-5)
    assert (policy - reference)[mask].abs().max() > 1e-3  # adapters back on after the reference pass
    assert torch.allclose(policy[mask], batch["old_logprobs"][mask], atol=1e-4)  # = the shared engine's
    # an engine holding its own weights (vLLM's path, the ZeRO-3 copy) gets the merged weights
    own = HFEngine(str(cached_tiny_model()), num_threads=1)
    own.update_weights(trainer.engine.policy_state_dict())
    prompt = batch["input_ids"][0, : trajs[0].prompt_len].tolist()
    out = own.generate([prompt], SamplingParams(n=1, temperature=1.0, max_new_tokens=12, seed=0))[0]
    ids = torch.tensor([prompt + out.token_ids])
    seq = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "loss_mask": torch.tensor([[0.0] * len(prompt) + [1.0] * len(out.token_ids)])}
    trainer_lp = no_grad_logprobs(trainer.engine, seq, 1, 1, 1.0, torch.device("cpu"), None)[0, len(prompt):]
    assert torch.allclose(trainer_lp, torch.tensor(out.logprobs), atol=1e-4)


@pytest.mark.deepspeed
def test_lora_under_deepspeed_zero2_two_ranks_trains_checkpoints_adapters_and_resumes(tmp_path):
    from peft import PeftModel

    from test_trainer_distributed import _lines, _train  # skips without deepspeed

    out = tmp_path / "run"
    args = (LORA, "optim.lr=1e-2", "algorithm.kl_coef=0.1")  # its runs have an entropy bonus: the adapters move
    _train(out, 2, 2, *args)
    lines = _lines(out)
    assert [x["step"] for x in lines] == [1, 2] and all(x["train/grad_norm"] > 0 for x in lines)
    assert lines[1]["train/kl"] > 0  # the reference (the DeepSpeed module with its adapters off) is the base
    step = out / "checkpoints" / "step_00000002"
    assert (step / "adapter_model.safetensors").is_file()
    assert not (step / "model.safetensors").exists()
    size = sum(p.stat().st_size for p in (step / "deepspeed").rglob("*") if p.is_file())
    assert size < 0.5 * (cached_tiny_model() / "model.safetensors").stat().st_size  # no frozen base inside
    adapted = PeftModel.from_pretrained(base_model(), step).eval()
    assert (logits(adapted) - logits(base_model())).abs().max() > 1e-4  # the adapters trained
    _train(out, 2, 3, *args, resume=True)
    resumed = _lines(out)
    assert [x["step"] for x in resumed] == [1, 2, 3]
    _train(tmp_path / "straight", 2, 3, *args)  # the same 3 steps without a break
    straight = _lines(tmp_path / "straight")
    for key in ("train/loss", "train/entropy", "train/grad_norm"):  # adapter + optimiser state restored
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-5), key


@pytest.mark.vllm
def test_lora_vllm_rollouts_get_the_merged_weights_after_each_step(tmp_path):
    import os

    pytest.importorskip("vllm")
    from agentrl.trainer import GRPOTrainer

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    trainer = GRPOTrainer(tiny_cfg(tmp_path, "run.steps=3", LORA, "algorithm.kl_coef=0.1", *MOVING,
                                   "rollout.engine=vllm", "rollout.vllm={enforce_eager: true}"))
    try:
        history = trainer.train()
    finally:
        trainer.close()
        trainer.rollout.close()
    for record in history[1:]:  # sampled by vLLM after merged-weight pushes
        assert record["train/kl"] > 1e-3  # the policy has left the base model ...
        # ... and vLLM samples from it, not from the base: fp32 CPU kernels agree to ~1e-5 nats
        assert record["mismatch/abs_logp_diff_max"] < 1e-3
        assert record["mismatch/kl"] < 1e-3 * record["train/kl"]
