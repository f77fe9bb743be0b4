"""``OpenAIEngine``: an OpenAI-compatible ``/v1/completions`` server as a rollout engine.

Made for ``vllm serve MODEL --logprobs-mode processed_logprobs`` (and ``agentrl.engines.serve``,
which serves an HFEngine the same way). Prompts are sent as token ids; the response must carry
the sampled token ids, which vLLM returns with ``return_token_ids`` (``choices[i].token_ids``) or,
on older servers, with ``return_tokens_as_token_ids`` (``logprobs.tokens`` as ``token_id:123``).
Only as a last resort is the returned text re-tokenised (and the completion marked
``extras["retokenized"]``), since that can drift from what was sampled.

The sampled tokens' log-probs are ``logprobs.token_logprobs``; they are ``log_softmax(logits/T)``
only if the server computes them after temperature (vLLM: ``--logprobs-mode processed_logprobs``;
its default ``raw_logprobs`` is the T=1 distribution).

``update_weights`` cannot push weights over this API: the server owns the model. It raises
unless ``on_update_weights`` is given (e.g. a callback that reloads the server).
"""
from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from agentrl.engines.base import Completion, SamplingParams

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIEngineError(RuntimeError):
    pass


class OpenAIEngine:
    """Rollout engine over HTTP.

    ``base_url``: the server root (``http://host:8000``; a trailing ``/v1`` is accepted).
    ``model``: the served model name (default: the first of ``GET /v1/models``).
    ``make_engine("openai", X, ...)`` passes ``X`` as ``base_url``; to name the model there, use
    ``make_engine("openai", "http://host:8000", model_name="m")`` or
    ``make_engine("openai", "m", url="http://host:8000")``.
    ``tokenizer``: object or path; default: loaded from ``model`` when that is a local directory,
    else ``None`` (pass one; the hub is never contacted implicitly).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        tokenizer: Any = None,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_concurrency: int = 32,
        extra_body: dict | None = None,
        on_update_weights: Callable[[dict], None] | None = None,
        url: str | None = None,
        model_name: str | None = None,
    ):
        import httpx

        if url is not None:  # make_engine("openai", "model-name", url="http://...")
            model, base_url = model or model_name or base_url, url
        model = model or model_name
        if not str(base_url).startswith(("http://", "https://")):
            raise ValueError(f"OpenAIEngine: base_url must start with http:// or https://, got {base_url!r}")
        root = str(base_url).rstrip("/")
        self.base_url = root if root.endswith("/v1") else root + "/v1"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max(1, max_concurrency)
        self.extra_body = dict(extra_body or {})
        self.on_update_weights = on_update_weights
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers=headers,
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
        )
        self.model = model or self._first_model()
        if tokenizer is None and os.path.isdir(self.model):  # ``vllm serve /path`` names the model by its path
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.model)
            except Exception:
                tokenizer = None
        elif isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, json: dict | None = None) -> dict:
        import httpx

        url = self.base_url + path
        last: str = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.request(method, url, json=json)
            except httpx.HTTPError as e:  # connection refused, timeouts, resets
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        raise OpenAIEngineError(f"{method} {url}: response is not JSON: {resp.text[:300]!r}") from None
                last = f"HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code not in RETRY_STATUS:
                    raise OpenAIEngineError(f"{method} {url} failed: {last}")
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * (2**attempt) * (0.5 + random.random()))
        raise OpenAIEngineError(f"{method} {url} failed after {self.max_retries + 1} attempts: {last}")

    def _first_model(self) -> str:
        data = self._request("GET", "/models").get("data") or []
        if not data:
            raise OpenAIEngineError(f"GET {self.base_url}/models lists no models; pass model=")
        return data[0]["id"]

    # ------------------------------------------------------------------ generation
    def _body(self, prompt: list[int], sp: SamplingParams, seed: int | None) -> dict:
        greedy = sp.temperature is None or sp.temperature <= 0
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt),
            "n": max(1, int(sp.n)),
            "max_tokens": int(sp.max_new_tokens),
            "temperature": 0.0 if greedy else float(sp.temperature),
            "top_p": 1.0 if greedy else float(sp.top_p),
            "logprobs": 1,
            "stop": list(sp.stop),
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }
        if sp.top_k and not greedy:
            body["top_k"] = int(sp.top_k)
        if sp.stop_token_ids:  # vLLM's extension (and agentrl serve engine's): the env's end-of-turn ids
            body["stop_token_ids"] = list(sp.stop_token_ids)
        if seed is not None:
            body["seed"] = seed
        body.update(self.extra_body)
        return body

    def _choice(self, ch: dict, prompt_index: int) -> Completion:
        lp = ch.get("logprobs") or {}
        ids = ch.get("token_ids")
        extras: dict[str, Any] = {}
        if ids is None and lp.get("tokens") and all(str(t).startswith("token_id:") for t in lp["tokens"]):
            ids = [int(str(t).split(":", 1)[1]) for t in lp["tokens"]]
        if ids is None:
            if self.tokenizer is None:
                raise OpenAIEngineError(
                    f"{self.base_url}/completions returned no token ids (return_token_ids / "
                    "return_tokens_as_token_ids unsupported) and no tokenizer was given to re-tokenise the text"
                )
            ids = self.tokenizer.encode(ch.get("text", ""), add_special_tokens=False)
            extras["retokenized"] = True
        lps = [float(x) if x is not None else float("nan") for x in (lp.get("token_logprobs") or [])]
        if len(lps) != len(ids):
            extras["logprobs_missing"] = True
            lps = (lps + [float("nan")] * len(ids))[: len(ids)]
        fr, stop_reason = ch.get("finish_reason"), ch.get("stop_reason")
        if fr == "length":
            reason, stop = "length", None
        elif fr == "stop" and isinstance(stop_reason, str):
            reason, stop = "stop", stop_reason
        elif fr == "stop":
            reason, stop = "eos", None
        else:
            reason, stop = "length", None
        return Completion(ids, lps, reason, stop_string=stop, prompt_index=prompt_index, extras=extras)

    def _one(self, j: int, prompt: list[int], sp: SamplingParams) -> list[Completion]:
        n = max(1, int(sp.n))
        seed = None if sp.seed is None else int(sp.seed) + j * n
        data = self._request("POST", "/completions", self._body(prompt, sp, seed))
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise OpenAIEngineError(f"POST {self.base_url}/completions returned {len(choices)} choices, expected {n}")
        return [self._choice(c, j) for c in choices]

    def generate(self, prompts: list[list[int]], sampling: SamplingParams | None = None) -> list[Completion]:
        """One request per prompt, sent concurrently (the server batches them)."""
        sp = sampling or SamplingParams()
        if not prompts:
            return []
        if len(prompts) == 1:
            return self._one(0, prompts[0], sp)
        with ThreadPoolExecutor(min(self.max_concurrency, len(prompts))) as pool:
            parts = list(pool.map(lambda jp: self._one(jp[0], jp[1], sp), enumerate(prompts)))
        return [c for part in parts for c in part]

    def update_weights(self, state_dict: dict) -> None:
        if self.on_update_weights is None:
            raise NotImplementedError(
                f"OpenAIEngine({self.base_url}) cannot load weights over the completions API; "
                "pass on_update_weights= (e.g. save + restart/reload the server) or use the hf/vllm engines"
            )
        self.on_update_weights(state_dict)

    def close(self) -> None:
        self._client.close()
