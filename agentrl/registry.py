"""Environment discovery: shipped envs plus third-party ``agentrl.envs`` entry points.

A third-party package declares, in its pyproject::

    [project.entry-points."agentrl.envs"]
    mypkg = "mypkg.envs:register"   # a callable that calls gymnasium.register(...)

and its environments appear in ``gymnasium.make`` and ``agentrl envs list`` after ``import agentrl``.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os

import gymnasium as gym

log = logging.getLogger(__name__)
NAMESPACE = "agentrl"
_loaded = False
plugin_env_ids: set[str] = set()
"""Ids registered by ``agentrl.envs`` entry points (listed beside the ``agentrl/`` namespace)."""


def load_env_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import agentrl.envs  # noqa: F401  (registers the shipped envs, even from a source checkout)

    if os.environ.get("AGENTRL_NO_PLUGINS"):
        return
    for ep in importlib.metadata.entry_points(group="agentrl.envs"):
        before = set(gym.registry)
        try:
            ep.load()()
        except Exception as e:  # a broken plugin must not break agentrl
            log.warning("agentrl.envs plugin %r failed to load: %s", ep.name, e)
        # a plugin registers under its own namespace (mypkg/MyEnv-v0): remember what it added
        plugin_env_ids.update(set(gym.registry) - before)


def registered_env_ids(all_namespaces: bool = False) -> list[str]:
    return sorted(k for k, spec in gym.registry.items()
                  if all_namespaces or spec.namespace == NAMESPACE or k.startswith(NAMESPACE + "/") or k in plugin_env_ids)


def add_cli_args(parser) -> None:
    parser.add_argument("--all", action="store_true", help="include gymnasium's own environments")


def cli_main(args) -> int:
    import gymnasium as gym

    load_env_plugins()
    for env_id in registered_env_ids(args.all):
        print(f"{env_id:<32} {gym.registry[env_id].entry_point}")
    return 0
