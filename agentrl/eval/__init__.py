"""Evaluation as papers report it: ``agentrl eval`` and ``agentrl eval compare``.

* ``config``: eval configs (``configs/eval/*.yaml``) and the trainer's ``eval:`` section (``EvalConfig``).
* ``run``: a suite through the collector (``run_suite``), and ``periodic_eval`` for the trainer.
* ``metrics``: avg@k, unbiased pass@k, maj@k, EM / F1 / cover-EM, tool use, the bootstrap.
* ``outputs``: the run folder (``samples.jsonl``, ``metrics.json``, ``report.md``, ``config.json``).
* ``compare``: two runs side by side with paired bootstrap intervals.
* ``cli``: the ``agentrl eval`` command.

Nothing is imported here, so ``agentrl.config`` can import ``agentrl.eval.config`` (no cycle).
"""
