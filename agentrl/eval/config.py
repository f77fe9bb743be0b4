"""Eval configs (``configs/eval/*.yaml``), strict like the training configs: unknown keys, bad
values and options that would be ignored are errors naming the key.

An eval config is a suite (datasets, sampling, k) plus the model to evaluate; ``fast:`` holds
``key=value`` overrides that ``agentrl eval CONFIG --fast`` applies (the CPU variant).
``EvalConfig`` is the trainer's ``eval:`` section: a suite run every ``every`` steps.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


DATA_HINT = ("the evaluation data lives in ../shared/data (see its README.md); run from the repo root "
             "or give an absolute path")
RESERVED_NAMES = {"average"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    """JSONL(.gz) of rows with ``question`` and ``answer`` (math) or ``answers`` (QA)."""
    env: str = "agentrl/PythonTool-v0"
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    kind: Literal["math", "qa"] | None = None
    """Which metrics; None: ``qa`` when the rows carry ``answers``, else ``math``."""
    limit: int | None = Field(None, ge=1)
    heldout_only: bool = True
    """Rows that carry a ``heldout`` field are used only when it is true (the shared QA files)."""
    in_corpus_only: bool = False
    """Only rows marked ``in_corpus`` (answerable from the shared closed corpus)."""

    @model_validator(mode="after")
    def _checks(self) -> "DatasetSpec":
        if self.name in RESERVED_NAMES:
            raise ValueError(f"dataset name {self.name!r} is reserved (metrics.json uses it for the suite average)")
        if "dataset" in self.env_kwargs:
            raise ValueError("give the dataset as `path`, not env_kwargs.dataset")
        return self


class RetrievalSpec(_Strict):
    """One retriever shared by every QA environment of the suite."""

    index_dir: str | None = None
    corpus: str | None = None
    """With ``index_dir``: build a BM25 index there from this corpus when it does not exist yet."""
    url: str | None = None
    """A ``agentrl serve retrieval`` (or Search-R1) server instead of an in-process index."""
    kind: Literal["bm25", "dense", "hybrid"] | None = None
    cache_size: int = Field(10_000, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> "RetrievalSpec":
        if (self.index_dir is None) == (self.url is None):
            raise ValueError("retrieval needs exactly one of index_dir or url")
        if self.corpus is not None and self.index_dir is None:
            raise ValueError("retrieval.corpus builds an index at retrieval.index_dir: set index_dir")
        return self


class EvalSuite(_Strict):
    name: str = "eval"
    datasets: list[DatasetSpec] = Field(min_length=1)
    k: int = Field(1, ge=1, description="samples per question")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens_per_turn: int = Field(256, ge=1)
    max_total_tokens: int = Field(2048, ge=8)
    max_observation_tokens: int = Field(512, ge=8)
    limit: int | None = Field(None, ge=1, description="questions per dataset (a cap on every dataset's own limit)")
    batch_questions: int = Field(16, ge=1, description="questions per collector call (k episodes each)")
    tool_workers: int = Field(16, ge=1)
    seed: int = 0
    bootstrap: int = Field(1000, ge=100, description="bootstrap replicates for the 95% intervals")
    retrieval: RetrievalSpec | None = None

    @model_validator(mode="after")
    def _checks(self) -> "EvalSuite":
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.max_new_tokens_per_turn > self.max_total_tokens:
            raise ValueError("max_new_tokens_per_turn exceeds max_total_tokens")
        return self


class EvalRunConfig(EvalSuite):
    """``agentrl eval CONFIG``: a suite and the model it runs."""

    model: str | None = None
    """Model directory (hf / vllm); with ``url``, the tokenizer directory when ``tokenizer`` is unset."""
    engine: Literal["hf", "vllm", "openai"] = "hf"
    url: str | None = None
    """OpenAI-compatible server (``vllm serve``, ``agentrl serve engine``); implies engine openai."""
    tokenizer: str | None = None
    served_model: str | None = None
    """Model name on the server (default: the first of its /v1/models)."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    init_if_missing: Literal["tiny", "small"] | None = None
    """Build a local tiny model at ``model`` when it does not exist (CPU smoke runs)."""
    out: str | None = None
    """Run folder; default ``runs/eval/<name>``."""
    fast: dict[str, Any] | None = None
    """Overrides ``--fast`` applies (dotted keys), e.g. ``{k: 2, limit: 4}``."""

    @model_validator(mode="after")
    def _engine(self) -> "EvalRunConfig":
        if self.engine == "openai" and self.url is None:
            raise ValueError("engine openai needs url (the server, e.g. http://127.0.0.1:8000)")
        if self.engine != "openai" and self.url is not None:
            raise ValueError(f"url is set but engine is {self.engine}: use engine openai or drop url")
        if self.engine != "openai" and self.model is None:
            raise ValueError(f"engine {self.engine} needs model (a model directory: --model DIR; --fast uses the tiny CPU model)")
        if self.init_if_missing and self.engine == "openai":
            raise ValueError("init_if_missing builds a local model: it does not apply to engine openai")
        if self.served_model and self.engine != "openai":
            raise ValueError("served_model applies to engine openai only")
        return self


class EvalConfig(_Strict):
    """The trainer's ``eval:`` section: a suite on a held-out subset every ``every`` steps."""

    every: int = Field(ge=1)
    config: str | None = None
    """Path of an eval config (``configs/eval/*.yaml``); its model / engine fields are not used."""
    suite: EvalSuite | None = None
    """Or the suite inline."""
    fast: bool = False
    """Apply the config's ``fast:`` overrides."""
    limit: int | None = Field(8, ge=1)
    """Questions per dataset (the first ones of each held-out set); None: all."""
    k: int | None = Field(None, ge=1)
    """Samples per question (default: the suite's)."""
    out_dir: str | None = None
    """Write each evaluation's run folder under ``<out_dir>/step<N>`` (default: none written)."""

    @model_validator(mode="after")
    def _one_suite(self) -> "EvalConfig":
        if (self.config is None) == (self.suite is None):
            raise ValueError("eval needs exactly one of config (a path) or suite (inline)")
        if self.fast and self.config is None:
            raise ValueError("eval.fast applies the `fast:` overrides of an eval config file: set eval.config")
        return self

    def resolve(self) -> EvalSuite:
        """The suite this section runs, with its ``limit`` and ``k`` applied."""
        suite = self.suite if self.suite is not None else load_eval_config(self.config, fast=self.fast, suite_only=True)
        tree = suite.model_dump(include=set(EvalSuite.model_fields))
        tree.update({key: value for key, value in (("limit", self.limit), ("k", self.k)) if value is not None})
        return EvalSuite.model_validate(tree)


def load_eval_config(path: str | Path, overrides: list[str] = (), fast: bool = False,
                     suite_only: bool = False) -> EvalRunConfig | EvalSuite:
    """Read an eval config; ``fast`` applies its ``fast:`` overrides, then ``key=value`` ``overrides``.
    ``suite_only``: just the suite (the trainer brings its own model and engine)."""
    from agentrl.config import ConfigError, parse_config, read_yaml_mapping  # here: agentrl.config imports this module

    p = Path(path)
    tree = read_yaml_mapping(p, kind="eval config")
    if fast:
        changes = tree.get("fast")
        if not isinstance(changes, dict) or not changes:
            raise ConfigError(f"{p} has no `fast:` mapping of overrides to apply with --fast")
        tree = copy.deepcopy(tree)
        for dotted, value in changes.items():
            *parents, last = str(dotted).split(".")
            node = tree
            for key in [*parents, last]:  # lists are indexed by position: datasets.0.limit
                if not isinstance(node, (dict, list)) or (isinstance(node, list) and not (key.isdigit() and int(key) < len(node))):
                    raise ConfigError(f"{p}: fast override {dotted}: no such entry {key!r}")
                if key == last:
                    node[int(key) if isinstance(node, list) else key] = value
                else:
                    node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if suite_only:
        tree = {k: v for k, v in tree.items() if k in EvalSuite.model_fields}
        return parse_config(tree, list(overrides), schema=EvalSuite)
    return parse_config(tree, list(overrides), schema=EvalRunConfig)
