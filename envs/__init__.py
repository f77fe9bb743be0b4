"""Environments shipped with agentrl, registered with gymnasium under the ``agentrl/`` namespace."""
import gymnasium as gym

SHIPPED = {
    "agentrl/PythonTool-v0": "agentrl.envs.python_tool:PythonToolEnv",
    "agentrl/Search-v0": "agentrl.envs.search:SearchEnv",
    "agentrl/AutoRefine-v0": "agentrl.envs.search:AutoRefineEnv",
    "agentrl/ToolUse-v0": "agentrl.envs.tool_use:ToolUseEnv",
}


def register_all() -> None:
    for env_id, entry_point in SHIPPED.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=True)


register_all()
