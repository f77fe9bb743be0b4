"""Multi-turn rollouts: the policy plays many episodes at once, token-exactly.

Each round, every live episode's ids go to the engine in one batch; then every episode's
tool calls run concurrently in a thread pool, so one slow call does not stall the rest.

Token exactness: the prompt is rendered once with the chat template; after that ids are only
appended. Sampled ids are kept as sampled (never decoded and re-encoded); observations are
tokenised once, on their own, and appended with loss mask 0.

Chat formats (Hermes / Qwen): a turn ends where the model ends it, at the end-of-turn token it
samples (EOS / ``<|im_end|>``, loss mask 1); each tool output is rendered as its own tool message
by the chat template, and what the template puts between that assistant turn and the next
generation prompt is appended, minus the end-of-turn token the model already sampled. So the
ids equal the template's own rendering of the conversation.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym

from agentrl.engines.base import Completion, RolloutEngine, SamplingParams
from agentrl.types import StopReason, Trajectory, TurnRecord

log = logging.getLogger(__name__)
TRUNCATION_MARKER = "\n...[observation truncated]...\n"
_PLACEHOLDER = "AGENTRL-ASSISTANT-PLACEHOLDER"


@dataclass
class CollectorConfig:
    max_new_tokens_per_turn: int = 256
    max_total_tokens: int = 2048
    """Prompt + all turns; an episode that reaches it ends with truncated=True."""
    max_observation_tokens: int = 512
    """Longer tool output is cut (head and tail kept) around a marker."""
    tool_workers: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    """Run-level seed mixed into every sampling seed (None: the collect seed alone)."""


@dataclass
class _Episode:
    env: gym.Env
    group_id: int
    task_id: str
    prompt: Any
    ids: list[int]
    mask: list[int]
    logprobs: list[float]
    prompt_len: int
    turns: list[TurnRecord] = field(default_factory=list)
    turn_spans: list[tuple[int, int]] = field(default_factory=list)
    total_reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    stop_reason: StopReason | None = None
    truncated: bool = False
    turn_end: str = ""
    """Text of the end-of-turn token that closed the last turn when the model sampled it (EOS)."""

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def append(self, ids: list[int], logprobs: list[float] | None) -> None:
        self.ids += ids
        self.mask += [1 if logprobs is not None else 0] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


class Collector:
    """Plays ``env_factory()`` environments against ``engine``.

    ``env_factory`` is a gymnasium id (with ``env_kwargs``) or a callable returning a new env.
    Env instances are pooled and reused across ``collect`` calls (they may hold sandbox sessions).
    """

    def __init__(
        self,
        env_factory: str | Callable[[], gym.Env],
        engine: RolloutEngine,
        config: CollectorConfig | None = None,
        env_kwargs: dict | None = None,
    ):
        if isinstance(env_factory, str):
            env_id, kwargs = env_factory, dict(env_kwargs or {})
            env_factory = lambda: gym.make(env_id, **kwargs)  # noqa: E731
        self.env_factory = env_factory
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = config or CollectorConfig()
        self._pool: list[gym.Env] = []
        self._executor = ThreadPoolExecutor(self.config.tool_workers, thread_name_prefix="agentrl-tool")
        self._round = 0
        self._end_of_turn_id = end_of_turn_id(self.tokenizer)
        self.timing: dict[str, float] = {}
        """Seconds spent generating and in env steps (tools) during the last ``collect``."""

    # -- public API ---------------------------------------------------------------------
    def collect(self, tasks: Sequence[dict], group_size: int = 1, seed: int = 0) -> list[Trajectory]:
        """One group of ``group_size`` episodes per task; returns trajectories in group order.

        Sampling seeds derive from ``seed`` and the round number, so a collect call is
        reproducible (the trainer passes the step number: resumed runs sample the same).
        """
        self.timing = {"generation_s": 0.0, "tools_s": 0.0}
        self._seed, self._round = seed, 0
        start = time.perf_counter()
        episodes = self._start(tasks, group_size, seed)
        self.timing["tools_s"] += time.perf_counter() - start
        while live := [e for e in episodes if not e.done]:
            start = time.perf_counter()
            self._generate(live)
            mid = time.perf_counter()
            self._step_envs([e for e in live if not e.done])
            self.timing["generation_s"] += mid - start
            self.timing["tools_s"] += time.perf_counter() - mid
        return [self._finish(e) for e in episodes]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for env in self._pool:
            env.close()
        self._pool.clear()

    # -- one round ------------------------------------------------------------------------
    def _start(self, tasks: Sequence[dict], group_size: int, seed: int) -> list[_Episode]:
        while len(self._pool) < len(tasks) * group_size:
            self._pool.append(self.env_factory())
        jobs = [(self._pool[i * group_size + j], i, task, seed + i * group_size + j)
                for i, task in enumerate(tasks) for j in range(group_size)]
        return list(self._executor.map(lambda job: self._reset(*job), jobs))

    def _reset(self, env: gym.Env, group_id: int, task: dict, seed: int) -> _Episode:
        prompt, info = env.reset(seed=seed, options={"task": task})
        ids = self._render_prompt(env, prompt)
        return _Episode(env, group_id, str(info.get("task_id", "")), prompt, list(ids), [0] * len(ids), [0.0] * len(ids), len(ids))

    def _generate(self, live: list[_Episode]) -> None:
        c = self.config
        budget = [min(c.max_new_tokens_per_turn, c.max_total_tokens - len(e.ids)) for e in live]
        for e, b in zip(live, budget):
            if b <= 0:
                self._stop(e, StopReason.MAX_TOKENS, truncated=True)
        batch = [(e, b) for e, b in zip(live, budget) if b > 0]
        # Episodes with different budgets share one call at the largest budget and are cut after.
        if not batch:
            return
        stop = tuple(dict.fromkeys(s for e, _ in batch for s in e.env.unwrapped.stop_strings))
        # Chat formats end a turn at the template's end-of-turn token, also when it is not the model's EOS.
        chat = any(getattr(e.env.unwrapped, "chat_observations", False) for e, _ in batch)
        end_ids = (self._end_of_turn_id,) if chat and self._end_of_turn_id is not None else ()
        base = self._seed if c.seed is None else c.seed * 1_000_003 + self._seed
        sampling = SamplingParams(c.temperature, c.top_p, c.top_k, max(b for _, b in batch), stop, 1, base * 1009 + self._round,
                                  stop_token_ids=end_ids)
        self._round += 1
        completions = self.engine.generate([e.ids for e, _ in batch], sampling)
        for (e, b), comp in zip(batch, completions):
            self._take_turn(e, comp, b)

    def _take_turn(self, e: _Episode, comp: Completion, budget: int) -> None:
        ids, logprobs = comp.token_ids[:budget], comp.logprobs[:budget]
        start = len(e.ids)
        e.append(ids, logprobs)
        e.turn_spans.append((start, len(e.ids)))
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        e.turns.append(TurnRecord(action=text, observation="", n_action_tokens=len(ids)))
        ended = comp.finish_reason == "eos" and bool(ids) and len(ids) == len(comp.token_ids)
        e.turn_end = self.tokenizer.decode(ids[-1:], skip_special_tokens=False) if ended else ""
        hit_limit = len(e.ids) >= self.config.max_total_tokens and (comp.finish_reason == "length" or len(ids) < len(comp.token_ids))
        if hit_limit:
            self._stop(e, StopReason.MAX_TOKENS, truncated=True)

    def _step_envs(self, live: list[_Episode]) -> None:
        results = list(self._executor.map(self._step_one, live))
        for e, result in zip(live, results):
            self._record_step(e, *result)

    def _step_one(self, e: _Episode):
        try:
            result = e.env.step(e.turns[-1].action)
            # Wall-clock latency is not in info (info must be deterministic): read it off the env,
            # in this thread, right after its step.
            return result, float(getattr(e.env.unwrapped, "last_tool_latency_s", 0.0) or 0.0), None
        except Exception as exc:  # infrastructure failure: end this episode, keep the batch going
            log.exception("env.step failed")
            return None, 0.0, exc

    def _record_step(self, e: _Episode, result, latency_s: float, error: Exception | None) -> None:
        turn = e.turns[-1]
        if error is not None:
            turn.info["error"] = f"{type(error).__name__}: {error}"
            e.stop_reason = StopReason.ERROR
            return
        observation, reward, terminated, truncated, info = result
        turn.reward, turn.calls = float(reward), info.get("tool_calls", [])
        turn.tool_latency_s = float(info.get("tool_latency_s", latency_s))  # envs that still report it in info
        outputs = info.get("tool_outputs") or None
        turn.info = {k: v for k, v in info.items() if k not in ("tool_calls", "tool_latency_s", "tool_outputs")}
        e.total_reward += float(reward)
        if terminated or truncated:
            e.components = dict(info.get("reward_components", {}))
            answered = info.get("answer") is not None
            e.stop_reason = StopReason.ANSWER if answered else StopReason.MAX_TURNS
            if observation:
                self._append_observation(e, observation, outputs)
            return
        self._append_observation(e, observation, outputs)
        if len(e.ids) >= self.config.max_total_tokens:
            self._stop(e, StopReason.MAX_TOKENS, truncated=True)

    def _append_observation(self, e: _Episode, observation: str, outputs: list[str] | None = None) -> None:
        text = self._wrap_observation(e.env, observation, outputs, e.turn_end)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        limit = self.config.max_observation_tokens
        if len(ids) > limit:
            marker = self.tokenizer.encode(TRUNCATION_MARKER, add_special_tokens=False)
            tail = min(16, limit // 4)
            ids = ids[: max(0, limit - tail - len(marker))] + marker + ids[-tail:]
        ids = ids[: max(0, self.config.max_total_tokens - len(e.ids))]
        e.append(ids, None)
        e.turns[-1].observation = observation
        e.turns[-1].n_observation_tokens = len(ids)

    def _stop(self, e: _Episode, reason: StopReason, truncated: bool) -> None:
        e.stop_reason, e.truncated = reason, truncated
        env = e.env.unwrapped
        if hasattr(env, "truncate"):  # score what the episode has, with no final answer
            reward, components = env.truncate()
            e.total_reward += reward
            e.components = components

    def _finish(self, e: _Episode) -> Trajectory:
        return Trajectory(
            input_ids=e.ids, loss_mask=e.mask, logprobs=e.logprobs, prompt_len=e.prompt_len,
            turns=e.turns, reward=e.total_reward, reward_components=e.components,
            stop_reason=e.stop_reason, truncated=e.truncated, group_id=e.group_id,
            task_id=e.task_id, turn_spans=e.turn_spans,
        )

    def _render_prompt(self, env: gym.Env, prompt: Any) -> list[int]:
        return render_prompt(self.tokenizer, prompt, getattr(env.unwrapped, "tool_schemas", None))

    def _wrap_observation(self, env: gym.Env, observation: str, outputs: list[str] | None = None, turn_end: str = "") -> str:
        if not getattr(env.unwrapped, "chat_observations", False):
            return observation  # tag formats (ReTool, Search-R1) append the text as is
        return wrap_tool_observation(self.tokenizer, outputs or [observation], turn_end=turn_end)


def render_prompt(tokenizer, prompt: Any, tools: list[dict] | None = None) -> list[int]:
    """The prompt's ids, rendered once by the chat template (a str prompt is encoded as is)."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=False)
    text = tokenizer.apply_chat_template(prompt, tools=tools or None, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def end_of_turn_id(tokenizer) -> int | None:
    """Id of the special token the chat template closes an assistant turn with (``<|im_end|>``,
    ``<|eot_id|>``), or None (no template, or a turn that ends in plain text)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": _PLACEHOLDER}],
                                             tokenize=False)
    except Exception:  # no chat template: tag formats only
        return None
    suffix = text[text.rfind(_PLACEHOLDER) + len(_PLACEHOLDER):] if _PLACEHOLDER in text else ""
    ids = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items() if getattr(t, "special", False)}
    return ids[0] if ids and ids[0] in special else None


def wrap_tool_observation(tokenizer, observation: str | Sequence[str], turn_end: str = "") -> str:
    """The chat template's own text between an assistant message and the next generation
    prompt, with one tool message per output (``observation``: one str, or one per call; Qwen's
    templates render one ``<tool_response>`` block per message). Found by rendering a placeholder
    conversation: the real history is never re-rendered, so templates that rewrite history
    (dropping earlier ``<think>`` blocks) cannot shift the ids.

    ``turn_end``: the text of the end-of-turn token the model already sampled (``<|im_end|>``);
    when the template's text starts with it, it is not appended a second time."""
    outputs = [observation] if isinstance(observation, str) else list(observation)
    convo = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _PLACEHOLDER}]
    convo += [{"role": "tool", "content": o} for o in outputs]
    text = tokenizer.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    text = text[text.rfind(_PLACEHOLDER) + len(_PLACEHOLDER):]
    if turn_end and text.startswith(turn_end):
        text = text[len(turn_end):]
    return text
