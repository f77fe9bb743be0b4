"""Benchmarks, one module per ``agentrl bench`` command (imported only when its command runs).

``trainer`` (agentrl GRPO against TRL's GRPOTrainer), ``rollout`` (collector overhead; engines
side by side via ``engines``), ``update`` (one policy update, full logits vs chunked),
``weight_sync`` (vLLM weight pushes, shared memory vs file). The sandbox and retrieval
benchmarks live beside what they measure (``agentrl.sandbox.bench``, ``agentrl.retrieval.bench``):
the sandbox package must never import torch.
"""
