"""Weight pushes into vLLM without the disk (``VLLMEngine(weight_sync="memory")``) and the file route.

The shared-memory handoff and the name / shape checks run in any venv; the engine tests need the
vllm-cpu venv (scripts/setup_vllm_venv.sh) and load the tiny model once per mode:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q tests/test_vllm_weight_sync.py -m "vllm or not vllm"
"""
from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")

from agentrl.engines import vllm_weight_sync as ws  # noqa: E402
from agentrl.model import cached_tiny_model  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _shm_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


# ---------------------------------------------------------------------------- no vLLM needed
class _Collect(ws.SharedMemoryWeightReceiver):
    """The receiver's handoff with vLLM's in-place reload replaced by a copy of what it is given."""

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format
        self.got = {k: v.clone() for k, v in weights_iterator}


def test_shared_memory_round_trip_keeps_every_dtype_and_shape():
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float16),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6).t(),  # non-contiguous: copied in row-major order
    }
    before = _shm_blocks()
    shared = ws.SharedWeights()
    try:
        name, manifest = shared.write(tensors)
        assert all(offset % 64 == 0 for *_, offset, _ in manifest)
        receiver = _Collect()
        assert receiver.agentrl_load_shared_weights(name, manifest) == len(tensors)
    finally:
        shared.close()
    assert list(receiver.got) == list(tensors)
    for name, t in tensors.items():
        assert receiver.got[name].dtype == t.dtype and receiver.got[name].shape == t.shape
        assert torch.equal(receiver.got[name], t)
    assert _shm_blocks() == before  # nothing left behind


def test_the_receiver_unmaps_the_block_when_the_reload_fails():
    class Failing(ws.SharedMemoryWeightReceiver):
        def reload_weights(self, weights_iterator, is_checkpoint_format):
            next(iter(weights_iterator))
            raise RuntimeError("boom")

    shared = ws.SharedWeights()
    try:
        name, manifest = shared.write({"w": torch.ones(1000)})
        with pytest.raises(RuntimeError, match="boom"):
            Failing().agentrl_load_shared_weights(name, manifest)
    finally:
        shared.close()


def test_the_kept_block_is_reused_while_the_layout_holds_and_the_receiver_sees_every_push():
    before = _shm_blocks()
    shared, receiver = ws.SharedWeights(), _Collect()
    try:
        first = {"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16)}
        name, manifest = shared.write(first)
        receiver.agentrl_load_shared_weights(name, manifest)
        mapped = receiver._agentrl_mapped[2]
        second = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16)}
        assert shared.write(second) == (name, manifest)  # same layout: same block, same manifest
        receiver.agentrl_load_shared_weights(name, manifest)
        assert receiver._agentrl_mapped[2] is mapped  # the worker kept its mapping
        assert all(torch.equal(receiver.got[k], second[k]) for k in second)  # and reads the new values
        third = {"a": torch.randn(4, 5), "b": second["b"]}  # a new shape: a new block
        name3, manifest3 = shared.write(third)
        assert name3 != name and name not in _shm_blocks()  # the old one is unlinked at once
        receiver.agentrl_load_shared_weights(name3, manifest3)
        assert torch.equal(receiver.got["a"], third["a"]) and receiver._agentrl_mapped[0] == name3
    finally:
        receiver.agentrl_unmap_shared_weights()
        shared.close()
    assert _shm_blocks() == before


def test_a_failed_reload_drops_the_kept_mapping():
    class FailingOnce(_Collect):
        fail = True

        def reload_weights(self, weights_iterator, is_checkpoint_format):
            if self.fail:
                self.fail = False
                raise RuntimeError("boom")
            super().reload_weights(weights_iterator, is_checkpoint_format)

    shared, receiver = ws.SharedWeights(), FailingOnce()
    try:
        name, manifest = shared.write({"w": torch.ones(10)})
        with pytest.raises(RuntimeError, match="boom"):
            receiver.agentrl_load_shared_weights(name, manifest)
        assert receiver._agentrl_mapped is None
        receiver.agentrl_load_shared_weights(*shared.write({"w": torch.full((10,), 2.0)}))  # maps it again
        assert torch.equal(receiver.got["w"], torch.full((10,), 2.0))
    finally:
        receiver.agentrl_unmap_shared_weights()
        shared.close()


def test_check_state_dict_names_the_bad_tensor():
    expected = ws.expected_shapes(str(cached_tiny_model()))
    assert expected and "model.embed_tokens.weight" in expected and "lm_head.weight" in expected
    good = {k: torch.zeros(v) for k, v in expected.items()}
    ws.check_state_dict(good, expected)
    with pytest.raises(ValueError, match=r"unknown tensor 'model.layers.0.mlp.gate_prj.weight'.*gate_proj"):
        ws.check_state_dict({"model.layers.0.mlp.gate_prj.weight": torch.zeros(1)}, expected)
    shape = expected["model.norm.weight"]
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(3,\), the model's is " + str(shape).replace("(", r"\(").replace(")", r"\)")):
        ws.check_state_dict({"model.norm.weight": torch.zeros(3)}, expected)
    with pytest.raises(TypeError, match="'model.norm.weight' is a list"):
        ws.check_state_dict({"model.norm.weight": [0.0]}, expected)


def test_memory_sync_unavailable_says_why():
    assert "worker_extension_cls" in ws.memory_sync_unavailable({"worker_extension_cls": "my.Ext"})
    if HAS_VLLM:
        assert ws.memory_sync_unavailable({}) is None  # vLLM 0.32 reloads from tensors
    else:
        assert "no in-place reload" in ws.memory_sync_unavailable({})


def test_config_takes_weight_sync_under_rollout_vllm():
    from agentrl.config import ConfigError, load_config

    base = ["rollout.engine=vllm"]
    assert load_config("configs/retool_tiny_cpu.yaml", [*base, "rollout.vllm={weight_sync: file}"]).rollout.vllm == {"weight_sync": "file"}
    with pytest.raises(ConfigError, match="weight_sync must be memory or file, got 'disk'"):
        load_config("configs/retool_tiny_cpu.yaml", [*base, "rollout.vllm={weight_sync: disk}"])


# ---------------------------------------------------------------------------- the real engine
@pytest.fixture(scope="module", params=["memory", "file"])
def engine(request, tmp_path_factory):
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from agentrl.engines import make_engine

    weights_dir = tmp_path_factory.mktemp(f"vllm-{request.param}") / "weights"
    eng = make_engine("vllm", str(cached_tiny_model()), enforce_eager=True, seed=0, dtype="float32",
                      weight_sync=request.param, weights_dir=weights_dir)
    assert eng.weight_sync == request.param
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(cached_tiny_model(), dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(hf_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cached_tiny_model())
    qs = ["What is 1234 * 5678?", "Where is the Nile river?"]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in qs]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _greedy(engine, prompts):
    from agentrl.engines import SamplingParams

    return engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))


def _assert_engine_runs(model, engine, prompts):
    """Greedy completions whose log-probs are ``model``'s under teacher forcing, token by token."""
    outs = _greedy(engine, prompts)
    for c in outs:
        ids = prompts[c.prompt_index] + c.token_ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, len(prompts[c.prompt_index]) - 1 : -1]
        ref = torch.log_softmax(logits.float(), -1)
        lp = ref.gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        assert (lp - torch.tensor(c.logprobs)).abs().max().item() < 1e-4
        assert (ref.max(-1).values - lp).max().item() < 1e-4  # each token is the argmax (up to float ties)
    return outs


@pytest.mark.vllm
def test_pushed_weights_are_the_ones_the_engine_generates_with(engine, hf_model, prompts):
    from transformers import AutoModelForCausalLM

    before = _assert_engine_runs(hf_model, engine, prompts)
    blocks = _shm_blocks()
    held = getattr(engine, "_shared_weights", None)
    kept_before = {held.block.name.lstrip("/")} if held is not None and held.block is not None else set()
    gen = torch.Generator().manual_seed(3)
    noisy: dict[int, torch.Tensor] = {}  # tied weights (embeddings = LM head) stay tied
    perturbed = {k: noisy.setdefault(v.data_ptr(), v + 0.1 * v.std().nan_to_num(0.02) * torch.randn(v.shape, generator=gen))
                 for k, v in hf_model.state_dict().items()}
    other = AutoModelForCausalLM.from_config(hf_model.config).to(torch.float32)
    other.load_state_dict(perturbed)
    engine.update_weights(perturbed)
    after = _assert_engine_runs(other, engine, prompts)
    # the random tiny model may keep its greedy tokens; their log-probs are the new weights'
    assert max((torch.tensor(a.logprobs) - torch.tensor(b.logprobs)).abs().max().item() for a, b in zip(after, before)) > 1e-2
    engine.update_weights(hf_model)  # a module is taken too; back to the original weights
    assert [c.token_ids for c in _assert_engine_runs(hf_model, engine, prompts)] == [c.token_ids for c in before]
    if engine.weight_sync == "memory":
        # the engine keeps one block for the next push (a new layout replaced the old one, unlinked)
        kept = {engine._shared_weights.block.name.lstrip("/")}
        assert _shm_blocks() - kept == blocks - kept_before and kept <= _shm_blocks()
    else:
        assert _shm_blocks() == blocks  # no block left behind
    if engine.weight_sync == "memory":
        assert not engine.weights_dir or not engine.weights_dir.exists()  # the disk was never written
    else:
        assert (engine.weights_dir / "model.safetensors").is_file()


@pytest.mark.vllm
def test_bad_state_dict_is_a_clear_error_and_the_engine_keeps_its_weights(engine, hf_model, prompts):
    good = hf_model.state_dict()
    unknown = {**good, "model.layers.0.self_attn.q_prj.weight": good["model.layers.0.self_attn.q_proj.weight"]}
    with pytest.raises(ValueError, match="unknown tensor 'model.layers.0.self_attn.q_prj.weight'"):
        engine.update_weights(unknown)
    wrong = {**good, "model.norm.weight": torch.ones(7)}
    with pytest.raises(ValueError, match="tensor 'model.norm.weight' has shape"):
        engine.update_weights(wrong)
    _assert_engine_runs(hf_model, engine, prompts)
    engine.update_weights(good)  # and still takes a good push
    _assert_engine_runs(hf_model, engine, prompts)
