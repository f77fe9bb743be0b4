"""agentrl: agentic tool-use reinforcement learning of LLMs.

Importing ``agentrl`` is light (no torch): environments, tools, parsers and the sandbox are
usable without a model. Shipped environments register with gymnasium on import of
``agentrl.envs``, which ``agentrl`` triggers along with third-party ``agentrl.envs`` entry points.
"""
__version__ = "0.1.0"


def _register_envs() -> None:
    from agentrl.registry import load_env_plugins

    load_env_plugins()


_register_envs()
