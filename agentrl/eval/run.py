"""Run an eval suite: every question k times through the collector, scored, aggregated, written.

``run_suite(suite, engine)`` is the whole job for any rollout engine (HF, vLLM, OpenAI-compatible
or a scripted policy); ``periodic_eval`` is the trainer's entry point. Run folder layout:
``agentrl.eval.outputs``.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.data import load_jsonl, resolve_path
from agentrl.eval.config import DATA_HINT, DatasetSpec, EvalConfig, EvalSuite
from agentrl.eval.metrics import aggregate, headline_metric, question_scores, score_sample, suite_average
from agentrl.types import Trajectory

log = logging.getLogger(__name__)
RETRIEVAL_KWARGS = ("index_dir", "retriever_url", "kind", "cache_size")


@dataclass
class SuiteResult:
    metrics: dict[str, dict[str, dict]]
    """``{dataset: {metric: {value, n, ci_low, ci_high[, headline]}}}`` (+ ``average``)."""
    rows: list[dict]
    """One per question (the ``samples.jsonl`` rows)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Timing and sizes: seconds, questions, episodes, per dataset."""

    def flat(self, prefix: str = "eval") -> dict[str, float]:
        """``{"eval/<dataset>/<metric>": value}`` for logging beside the training metrics."""
        return {f"{prefix}/{ds}/{name}": m["value"] for ds, metrics in self.metrics.items() for name, m in metrics.items()}


# -- data -----------------------------------------------------------------------------------
def load_dataset(spec: DatasetSpec, limit: int | None = None) -> tuple[list[dict], str]:
    """The rows a dataset spec selects (held-out filter, in-corpus filter, limit) and its kind."""
    path = resolve_path(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {spec.name!r}: file not found: {path} ({DATA_HINT})")
    rows = load_jsonl(path, require=("question",))
    if spec.heldout_only and any("heldout" in r for r in rows):
        rows = [r for r in rows if r.get("heldout")]
    if spec.in_corpus_only:
        rows = [r for r in rows if r.get("in_corpus")]
    caps = [c for c in (spec.limit, limit) if c is not None]
    rows = rows[: min(caps)] if caps else rows
    if not rows:
        raise ValueError(f"dataset {spec.name!r}: no rows left in {path} after heldout_only={spec.heldout_only}, "
                         f"in_corpus_only={spec.in_corpus_only}")
    kind = spec.kind or ("qa" if "answers" in rows[0] else "math")
    need = "answers" if kind == "qa" else "answer"
    for i, r in enumerate(rows):
        if kind == "qa" and "answers" not in r and "answer" in r:
            r["answers"] = [r["answer"]]
        if need not in r:
            raise ValueError(f"dataset {spec.name!r}: row {i} of {path} has no {need!r} (kind {kind})")
        if kind == "qa" and isinstance(r["answers"], str):
            r["answers"] = [r["answers"]]
        r.setdefault("id", f"{spec.name}-{i}")
    return rows, kind


# -- shared resources: one retriever, one sandbox for all episodes ------------------------------
def _shared_env_kwargs(spec: DatasetSpec, kind: str, suite: EvalSuite, stack: ExitStack, cache: dict) -> dict:
    kwargs = dict(spec.env_kwargs)
    retrieval = {k: kwargs.pop(k) for k in RETRIEVAL_KWARGS if k in kwargs}
    if "retriever" not in kwargs and (retrieval or (suite.retrieval and kind == "qa")):
        kwargs["retriever"] = _retriever(retrieval, suite, cache)
    if spec.env == "agentrl/PythonTool-v0" and kwargs.get("sandbox", "local") == "local" and kwargs.get("tool_enabled", True):
        if "sandbox" not in cache:  # one sandbox pool instead of one per pooled env
            from agentrl.sandbox import make_sandbox

            cache["sandbox"] = make_sandbox("local")
            stack.callback(cache["sandbox"].close)
        kwargs["sandbox"] = cache["sandbox"]
    return kwargs


def _retriever(env_retrieval: dict, suite: EvalSuite, cache: dict):
    """The dataset's own retrieval kwargs, else the suite's ``retrieval:``; loaded once."""
    from agentrl.envs.search import make_retriever

    if env_retrieval:
        index_dir, url, corpus = env_retrieval.get("index_dir"), env_retrieval.get("retriever_url"), None
        kind, cache_size = env_retrieval.get("kind"), env_retrieval.get("cache_size", 10_000)
    else:
        r = suite.retrieval
        index_dir, url, corpus, kind, cache_size = r.index_dir, r.url, r.corpus, r.kind, r.cache_size
    key = (index_dir, url, kind)
    if key not in cache:
        if corpus and not (Path(index_dir) / "manifest.json").is_file():
            path = resolve_path(corpus)
            if not path.is_file():
                raise FileNotFoundError(f"retrieval.corpus not found: {path} ({DATA_HINT})")
            from agentrl.retrieval.index import build_index

            log.info("building a BM25 index at %s from %s", index_dir, path)
            build_index(path, index_dir, kind="bm25", show_progress=False)
        cache[key] = make_retriever(index_dir=index_dir, retriever_url=url, kind=kind, cache_size=cache_size)
    return cache[key]


# -- one sample's record ----------------------------------------------------------------------
def sample_record(t: Trajectory, kind: str, gold: Any) -> dict:
    answer = t.turns[-1].info.get("answer") if t.turns else None
    return {
        "answer": answer,
        "scores": score_sample(kind, answer, gold),
        "reward": t.reward,
        "components": t.reward_components,
        "stop_reason": t.stop_reason.value,
        "response_tokens": t.n_generated,
        "turns": [{"text": turn.action, "calls": turn.calls, "observation": turn.observation,
                   "tool_latency_s": turn.tool_latency_s, "n_parse_errors": len(turn.info.get("parse_errors", [])),
                   "n_invalid_calls": int(turn.info.get("n_invalid_calls", 0))}
                  for turn in t.turns],
    }


# -- the run ----------------------------------------------------------------------------------
def run_suite(suite: EvalSuite, engine, out_dir: str | Path | None = None, progress: bool = True,
              run_info: dict | None = None) -> SuiteResult:
    """Every dataset's questions ``suite.k`` times through the collector with ``engine``; writes
    the run folder to ``out_dir`` when given."""
    from agentrl.collector import Collector, CollectorConfig

    datasets = [(spec, *load_dataset(spec, suite.limit)) for spec in suite.datasets]  # fail early on data
    config = CollectorConfig(max_new_tokens_per_turn=suite.max_new_tokens_per_turn, max_total_tokens=suite.max_total_tokens,
                             max_observation_tokens=suite.max_observation_tokens, tool_workers=suite.tool_workers,
                             temperature=suite.temperature, top_p=suite.top_p, top_k=suite.top_k, seed=suite.seed)
    rows: list[dict] = []
    per_dataset: dict[str, list[dict]] = {}
    info: dict[str, Any] = {"datasets": {}}
    start = time.perf_counter()
    with ExitStack() as stack:
        bar = stack.enter_context(_Progress(sum(len(r) for _, r, _ in datasets), suite.name, progress))
        cache: dict = {}
        for spec, tasks, kind in datasets:
            t0 = time.perf_counter()
            collector = Collector(spec.env, engine, config, env_kwargs={**_shared_env_kwargs(spec, kind, suite, stack, cache),
                                                                        "dataset": tasks})
            try:
                for lo in range(0, len(tasks), suite.batch_questions):
                    batch = tasks[lo: lo + suite.batch_questions]
                    trajs = collector.collect(batch, group_size=suite.k, seed=lo * suite.k)
                    for i, task in enumerate(batch):
                        gold = task["answers"] if kind == "qa" else task["answer"]
                        samples = [sample_record(t, kind, gold) for t in trajs[i * suite.k: (i + 1) * suite.k]]
                        scores = question_scores(kind, samples)
                        rows.append({"id": str(task["id"]), "dataset": spec.name, "kind": kind, "question": task["question"],
                                     "gold": gold, "scores": {m: list(v) for m, v in scores.items()}, "samples": samples})
                        per_dataset.setdefault(spec.name, []).append(scores)
                    bar(len(batch))
            finally:
                collector.close()
            info["datasets"][spec.name] = {"questions": len(tasks), "episodes": len(tasks) * suite.k, "kind": kind,
                                           "seconds": round(time.perf_counter() - t0, 3)}
    metrics = {name: aggregate(qs, suite.bootstrap, suite.seed, headline_metric(info["datasets"][name]["kind"], suite.k))
               for name, qs in per_dataset.items()}
    if len(per_dataset) > 1:
        metrics["average"] = suite_average(per_dataset, suite.bootstrap, suite.seed)
    info.update(seconds=round(time.perf_counter() - start, 3), questions=len(rows), k=suite.k, **(run_info or {}))
    result = SuiteResult(metrics, rows, info)
    if out_dir is not None:
        from agentrl.eval.outputs import write_run

        write_run(out_dir, result, suite)
    return result


class _Progress:
    """A rich progress bar over questions (rate and ETA); a no-op when disabled."""

    def __init__(self, total: int, name: str, enabled: bool):
        self.total, self.name, self.enabled = total, name, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._bar.__enter__()
        task = self._bar.add_task(f"eval {self.name}", total=self.total, rate="")

        def advance(n: int) -> None:
            self._bar.advance(task, n)
            speed = self._bar.tasks[0].speed
            self._bar.update(task, rate=f"{speed:.2f} q/s" if speed else "")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)


# -- the trainer's entry point -----------------------------------------------------------------
def periodic_eval(eval_cfg: EvalConfig, engine, step: int = 0) -> dict[str, float]:
    """Run the trainer's ``eval:`` section with its rollout engine (the collector uses
    ``engine.tokenizer``); returns flat ``eval/<dataset>/<metric>`` values and ``eval/seconds``."""
    suite = eval_cfg.resolve()
    out = Path(eval_cfg.out_dir) / f"step{step}" if eval_cfg.out_dir else None
    result = run_suite(suite, engine, out_dir=out, progress=False, run_info={"step": step})
    flat = result.flat()
    flat["eval/seconds"] = float(result.info["seconds"])
    return flat
