"""Evaluation as papers report it: ``agentrl eval`` and ``agentrl eval compare``.

* ``config``: eval configs (``configs/eval/*.yaml``) and the trainer's ``eval:`` section (``EvalConfig``).
* ``run``: a suite through the collector (``run_suite``), and ``periodic_eval`` for the trainer.
* ``metrics``: avg@k, unbiased pass@k, maj@k, EM / F1 / cover-EM, tool use, the bootstrap.
* ``outputs``: the run folder (``samples.jsonl``, ``metrics.json``, ``report.md``, ``config.json``).
* ``compare``: two runs side by side with paired bootstrap intervals.
"""
from agentrl.eval.cli import add_cli_args, cli_main
from agentrl.eval.config import EvalConfig, EvalRunConfig, EvalSuite, load_eval_config
from agentrl.eval.run import periodic_eval, run_suite

__all__ = ["EvalConfig", "EvalRunConfig", "EvalSuite", "add_cli_args", "cli_main", "load_eval_config", "periodic_eval",
           "run_suite"]
