"""Serve a rollout engine over an OpenAI-compatible ``/v1/completions`` API (FastAPI).

The subset vLLM's server offers for RL rollouts: token-id (or text) prompts, ``n``,
``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``, ``stop_token_ids``, ``seed``, ``logprobs``,
``include_stop_str_in_output``, ``return_token_ids`` and ``return_tokens_as_token_ids``. Every
answer is a real generation of the wrapped engine (HFEngine by default).

    python -m agentrl.engines.serve --model DIR --port 8000
    (or ``agentrl serve engine`` once wired into the CLI)
"""
import argparse
import threading
import time
import uuid
from typing import Any

from agentrl.engines.base import SamplingParams


def make_app(engine: Any, model_name: str):
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    class CompletionRequest(BaseModel):
        model: str | None = None
        prompt: list[int] | list[list[int]] | str | list[str]
        max_tokens: int = 16
        n: int = 1
        temperature: float | None = 1.0
        top_p: float | None = 1.0
        top_k: int | None = None
        stop: str | list[str] | None = None
        stop_token_ids: list[int] | None = None
        seed: int | None = None
        logprobs: int | None = None
        include_stop_str_in_output: bool = False
        skip_special_tokens: bool = True
        return_token_ids: bool | None = None
        return_tokens_as_token_ids: bool | None = None

    app = FastAPI(title="agentrl engine server")
    lock = threading.Lock()  # engines are not thread-safe; requests run one at a time
    tok = engine.tokenizer

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "agentrl"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if req.model not in (None, model_name):
            raise HTTPException(404, f"model {req.model!r} not found; this server serves {model_name!r}")
        p = req.prompt
        if isinstance(p, str):
            prompts = [tok.encode(p, add_special_tokens=False)]
        elif p and isinstance(p[0], str):
            prompts = [tok.encode(x, add_special_tokens=False) for x in p]
        elif p and isinstance(p[0], list):
            prompts = [list(x) for x in p]
        else:
            prompts = [list(p)]
        if not prompts or any(not x for x in prompts):
            raise HTTPException(400, "empty prompt")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        sp = SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=max(0, req.top_k or 0),
            max_new_tokens=req.max_tokens,
            stop=stop,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            n=req.n,
            seed=req.seed,
        )
        with lock:
            outs = engine.generate(prompts, sp)
        choices = []
        for i, c in enumerate(outs):
            ids = list(c.token_ids)  # whole tokens, the stop string's included
            text = tok.decode(ids, skip_special_tokens=req.skip_special_tokens)
            if c.stop_string and not req.include_stop_str_in_output:
                cut = text.find(c.stop_string)
                text = text[:cut] if cut >= 0 else text
            choice: dict[str, Any] = {
                "index": i,
                "text": text,
                "finish_reason": "length" if c.finish_reason == "length" else "stop",
                "stop_reason": c.stop_string,
            }
            if req.logprobs is not None:
                pieces = [f"token_id:{t}" for t in ids] if req.return_tokens_as_token_ids else tok.convert_ids_to_tokens(ids)
                choice["logprobs"] = {
                    "tokens": pieces,
                    "token_logprobs": list(c.logprobs),
                    "top_logprobs": [{pieces[k]: c.logprobs[k]} for k in range(len(ids))],
                    "text_offset": [],
                }
            if req.return_token_ids:
                choice["token_ids"] = ids
                choice["prompt_token_ids"] = prompts[c.prompt_index]
            choices.append(choice)
        n_prompt = sum(len(x) for x in prompts)
        n_gen = sum(len(c.token_ids) for c in outs)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen},
        }

    return app


class ServerThread:
    """Run ``uvicorn`` for an app in a background thread (port 0 picks a free port)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"engine server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (agentrl model init, or any HF causal LM)")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads for the hf engine")


def cli_main(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrl.engines import make_engine

    options = {"num_threads": args.num_threads} if args.engine == "hf" and args.num_threads else {}
    engine = make_engine(args.engine, args.model, **options)
    app = make_app(engine, args.served_model_name or args.model)
    print(f"serving {args.model} ({args.engine}) at http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_cli_args(ap)
    raise SystemExit(cli_main(ap.parse_args()))
