"""OpenAIEngine against a real OpenAI-compatible server on loopback.

The server (``agentrl.engines.serve``) wraps an HFEngine: every answer is a real generation, and
the engine's results are checked against HFEngine called directly and a teacher-forced forward.
``vllm serve`` is exercised in tests/test_engine_vllm.py (marked vllm).
"""
from __future__ import annotations

import httpx
import pytest
import torch

from agentrl.engines import SamplingParams, make_engine
from agentrl.engines.hf import HFEngine
from agentrl.engines.openai import OpenAIEngine, OpenAIEngineError
from agentrl.engines.serve import ServerThread, make_app
from agentrl.model import cached_tiny_model


@pytest.fixture(scope="module")
def hf():
    return HFEngine(cached_tiny_model())


@pytest.fixture(scope="module")
def server(hf):
    with ServerThread(make_app(hf, "tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def prompts(hf):
    tok = hf.tokenizer
    qs = ["What is 1234 * 5678?", "What is 12 * 3?"]
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)) for q in qs]


def test_matches_direct_engine_and_teacher_forcing(server, hf, prompts):
    eng = make_engine("openai", server.url, model_name="tiny", tokenizer=hf.tokenizer)
    assert eng.model == "tiny"
    assert make_engine("openai", "tiny", url=server.url, tokenizer=hf.tokenizer).base_url == server.url + "/v1"
    sp = SamplingParams(temperature=0.8, max_new_tokens=16, n=2, seed=3)
    outs = eng.generate(prompts, sp)
    assert [c.prompt_index for c in outs] == [0, 0, 1, 1]
    # The server runs one request per prompt with seed + j*n: same as HFEngine per prompt.
    for j, p in enumerate(prompts):
        direct = hf.generate([p], SamplingParams(temperature=0.8, max_new_tokens=16, n=2, seed=3 + 2 * j))
        assert [c.token_ids for c in outs[2 * j : 2 * j + 2]] == [c.token_ids for c in direct]
    for c in outs:
        assert not c.extras.get("retokenized")
        full = torch.tensor([prompts[c.prompt_index] + c.token_ids])
        with torch.no_grad():
            logits = hf.model(full).logits[0, len(prompts[c.prompt_index]) - 1 : -1] / 0.8
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        assert (ref - torch.tensor(c.logprobs)).abs().max() < 1e-4


def test_model_discovery_stop_and_length(server, hf, prompts):
    eng = OpenAIEngine(server.url + "/v1", tokenizer=hf.tokenizer)  # model from /v1/models
    assert eng.model == "tiny"
    free = eng.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=12))[0]
    assert free.finish_reason in ("length", "eos")
    text = hf.tokenizer.decode(free.token_ids)
    stop = text[len(hf.tokenizer.decode(free.token_ids[:3])) :][:2]
    if stop.strip() and stop not in hf.tokenizer.decode(free.token_ids[:3]):
        out = eng.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=12, stop=(stop,)))[0]
        assert out.finish_reason == "stop" and out.stop_string == stop
        assert out.token_ids == free.token_ids[: len(out.token_ids)]


def test_errors_name_the_url():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OpenAIEngineError, match=f"127.0.0.1:{port}"):
        OpenAIEngine(f"http://127.0.0.1:{port}", model="x", max_retries=1, backoff_s=0.01).generate([[1, 2]], SamplingParams(max_new_tokens=2))


def test_client_error_not_retried(server, hf):
    eng = OpenAIEngine(server.url, model="not-served", tokenizer=hf.tokenizer, max_retries=3, backoff_s=5)
    with pytest.raises(OpenAIEngineError, match="HTTP 404"):
        eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))


def test_server_speaks_openai_fields(server):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "What is", "max_tokens": 3, "logprobs": 1, "temperature": 0})
    ch = r.json()["choices"][0]
    assert r.status_code == 200 and len(ch["logprobs"]["token_logprobs"]) <= 3 and isinstance(ch["text"], str)
