"""A SQL tool environment for agentrl, shipped as a separate package (see docs/custom_env.md)."""
import gymnasium as gym

ENV_ID = "sqlite_env/ShopSQL-v0"


def register() -> None:
    """Called by agentrl through the ``agentrl.envs`` entry point (pyproject.toml)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="agentrl_sqlite_env.env:ShopSQLEnv", disable_env_checker=True)
