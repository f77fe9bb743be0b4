"""``agentrl eval``: a config (``configs/eval/*.yaml``) or one dataset given by flags.

    agentrl eval configs/eval/aime24.yaml --fast --model runs/tiny-model
    agentrl eval --env agentrl/PythonTool-v0 --dataset PATH --model DIR -k 8 --temperature 0.6 --out runs/eval/NAME
    agentrl eval --dataset PATH --url http://127.0.0.1:8000 --tokenizer DIR     # any served model
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from agentrl.config import ConfigError
from agentrl.data import resolve_path
from agentrl.eval.config import EvalRunConfig, EvalSuite, load_eval_config

# flag -> config key, applied over a config file when given
FLAG_KEYS = {"model": "model", "url": "url", "engine": "engine", "tokenizer": "tokenizer", "served_model": "served_model",
             "k": "k", "temperature": "temperature", "top_p": "top_p", "limit": "limit", "seed": "seed", "out": "out",
             "max_new_tokens": "max_new_tokens_per_turn", "max_total_tokens": "max_total_tokens"}


def add_cli_args(parser) -> None:
    parser.add_argument("config", nargs="?", help="eval config (configs/eval/*.yaml); or give --dataset")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, right after it (e.g. k=4 limit=10)")
    parser.add_argument("--fast", action="store_true", help="apply the config's `fast:` overrides (the CPU variant)")
    parser.add_argument("--env", default="agentrl/PythonTool-v0", help="gymnasium id (with --dataset)")
    parser.add_argument("--env-kwargs", default="{}", help="JSON dict of env options (with --dataset)")
    parser.add_argument("--dataset", help="JSONL of tasks, e.g. ../shared/data/math/aime24.jsonl (instead of a config)")
    parser.add_argument("--kind", choices=["math", "qa"], help="metrics for --dataset (default: from its rows)")
    parser.add_argument("--model", help="model directory (hf / vllm; with --url: the tokenizer if --tokenizer is unset)")
    parser.add_argument("--url", help="OpenAI-compatible server (vllm serve, agentrl serve engine): engine openai")
    parser.add_argument("--engine", choices=["hf", "vllm", "openai"])
    parser.add_argument("--tokenizer", help="tokenizer directory for --url")
    parser.add_argument("--served-model", help="model name on the server (default: its first /v1/models entry)")
    parser.add_argument("-k", type=int, help="samples per question")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--limit", type=int, help="questions per dataset")
    parser.add_argument("--max-new-tokens", type=int, help="per turn")
    parser.add_argument("--max-total-tokens", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="run folder (default runs/eval/<name>)")
    parser.add_argument("--no-progress", action="store_true")


def build_config(args) -> EvalRunConfig:
    flags = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    if args.url and not args.engine:
        flags["engine"] = "openai"  # --url means the OpenAI-compatible engine
    if args.config and args.dataset:
        raise ConfigError("give a config file or --dataset, not both")
    if args.config:
        overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items()]
        return load_eval_config(args.config, [*args.overrides, *overrides], fast=args.fast)
    if not args.dataset:
        raise ConfigError("give an eval config (configs/eval/*.yaml) or --dataset PATH")
    if args.overrides or args.fast:
        raise ConfigError("key=value overrides and --fast apply to a config file")
    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--env-kwargs is not valid JSON: {e}") from None
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", resolve_path(args.dataset).name.split(".")[0]) or "dataset"
    dataset = {"name": name, "path": args.dataset, "env": args.env, "env_kwargs": env_kwargs, "kind": args.kind}
    from agentrl.config import parse_config

    return parse_config({"name": name, "datasets": [dataset], **flags}, schema=EvalRunConfig)


def make_eval_engine(cfg: EvalRunConfig):
    from agentrl.engines import make_engine

    if cfg.engine == "openai":
        tokenizer = cfg.tokenizer or cfg.model
        return make_engine("openai", cfg.url, model_name=cfg.served_model, tokenizer=tokenizer, **cfg.engine_options)
    if cfg.init_if_missing and not (Path(cfg.model) / "config.json").is_file():
        from agentrl.model import init_tiny_model

        print(f"building a {cfg.init_if_missing} model at {cfg.model}")
        init_tiny_model(cfg.model, size=cfg.init_if_missing, seed=cfg.seed)
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"model directory not found: {cfg.model} (agentrl model init --out DIR builds a tiny one)")
    options = dict(cfg.engine_options)
    if cfg.engine == "hf":
        options.setdefault("num_threads", 1)  # see README: torch's default threads slow small-model decoding
    return make_engine(cfg.engine, cfg.model, **options)


def cli_main(args) -> int:
    from agentrl.eval.outputs import METRICS, REPORT, SAMPLES
    from agentrl.eval.run import load_dataset, run_suite

    try:  # config and data problems are reported before a model loads
        cfg = build_config(args)
        suite = EvalSuite.model_validate(cfg.model_dump(include=set(EvalSuite.model_fields)))
        for spec in suite.datasets:
            load_dataset(spec, suite.limit)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    out = Path(cfg.out or f"runs/eval/{cfg.name}")
    engine = make_eval_engine(cfg)
    result = run_suite(suite, engine, out_dir=out, progress=not args.no_progress,
                       run_info={"model": cfg.url or cfg.model, "engine": cfg.engine})
    for dataset, metrics in result.metrics.items():
        shown = [(name, m) for name, m in metrics.items() if m.get("headline")] or list(metrics.items())[:1]
        print(f"{dataset}: " + ", ".join(f"{name} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}] (n={m['n']})"
                                         for name, m in shown))
    print(f"wrote {out / SAMPLES}, {out / METRICS}, {out / REPORT}")
    return 0
