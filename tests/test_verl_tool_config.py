"""verl-style tool configs: verl's own BaseTool, schemas and Gsm8kTool (tests/reference/verl_tools,
copied from volcengine/verl) loaded from YAML like verl's initialize_tools_from_config does."""
import asyncio
import textwrap
from typing import Any, Optional

import pytest
from reference.verl_tools.base_tool import BaseTool
from reference.verl_tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from agentrl.env import ToolEnv
from agentrl.function_tools import FunctionTool
from agentrl.parsers import HermesParser
from agentrl.tools import Tool
from agentrl.verl_tools import ToolConfigError, VerlTool, load_tool_config

# verl's examples/sglang_multiturn/config/tool_config/gsm8k_tool_config.yaml, class_name pointed at the copy
GSM8K_CONFIG = """
tools:
  - class_name: "reference.verl_tools.gsm8k_tool.Gsm8kTool"
    config:
      type: native
    tool_schema:
      type: "function"
      function:
        name: "calc_gsm8k_reward"
        description: "A tool for calculating the reward of gsm8k. (1.0 if parsed answer is correct, 0.0 if parsed answer is incorrect or not correctly parsed)"
        parameters:
          type: "object"
          properties:
            answer:
              type: "string"
              description: "The model's answer to the GSM8K math problem, must be a digits"
          required: ["answer"]
"""


class NotesTool(BaseTool):
    """A verl tool with per-instance state, its own default schema and the pre-0.5 return types."""

    live: dict[str, list[str]] = {}

    def __init__(self, config: dict, tool_schema: Optional[OpenAIFunctionToolSchema]):
        super().__init__(config, tool_schema)
        self.prefix = config.get("prefix", "")

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return OpenAIFunctionToolSchema.model_validate({"type": "function", "function": {
            "name": "note", "description": "Keep a note; returns all notes so far.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string", "description": "the note"}}, "required": ["text"]}}})

    async def create(self, instance_id: Optional[str] = None, **kwargs) -> str:
        self.live[instance_id] = []
        return instance_id  # verl < 0.4.1 returned the id alone

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[str, float, dict]:
        if parameters.get("text") == "fail":
            raise RuntimeError("the note service is down")
        if parameters.get("text") == "slow":
            await asyncio.sleep(10)
        self.live[instance_id].append(self.prefix + parameters["text"])
        return "; ".join(self.live[instance_id]), 0.5, {"n": len(self.live[instance_id])}

    async def release(self, instance_id: str, **kwargs) -> None:
        del self.live[instance_id]


class NativeWordCount:
    """An agentrl-native tool class: built with config as keyword arguments."""

    name = "word_count"
    description = "Count words."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def __init__(self, min_length: int = 1):
        self.min_length = min_length

    def call(self, arguments):
        return str(sum(len(w) >= self.min_length for w in arguments["text"].split()))


def shout(text: str) -> str:
    """Shout the text.

    Args:
        text: What to shout.
    """
    return text.upper()


def write(tmp_path, text: str):
    path = tmp_path / "tool_config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_verl_gsm8k_tool_from_its_config(tmp_path, capsys):
    [tool] = load_tool_config(write(tmp_path, GSM8K_CONFIG))
    assert isinstance(tool, VerlTool) and isinstance(tool, Tool)
    assert tool.name == "calc_gsm8k_reward" and tool.description.startswith("A tool for calculating the reward of gsm8k")
    assert tool.parameters == {"type": "object", "required": ["answer"], "properties": {
        "answer": {"type": "string", "description": "The model's answer to the GSM8K math problem, must be a digits"}}}
    assert '"calc_gsm8k_reward"' in capsys.readouterr().out  # verl's BaseTool prints its schema: it really ran

    tool.reset()
    tool.create_kwargs = {"ground_truth": "72"}  # verl's per-row tools_kwargs[name]["create_kwargs"]
    assert tool.call({"answer": "72"}) == "Current parsed answer='72' reward=1.0"
    assert tool.last_reward == 0.0  # verl: no penalty for an improved answer
    assert tool.call({"answer": "72"}) == "Current parsed answer='72' reward=1.0"
    assert tool.last_reward == -0.05 and tool.episode_reward == -0.05  # verl: penalty for a repeat
    first = tool.instance_id
    assert list(tool.tool._instance_dict) == [first]
    tool.reset()  # the next episode: the old instance is released, a fresh one made on the first call
    assert tool.tool._instance_dict == {} and tool.episode_reward == 0.0
    tool.call({"answer": "3"})
    assert tool.instance_id != first and tool.tool._instance_dict[tool.instance_id]["reward"] == 0.0
    tool.close()
    tool.close()  # twice is harmless
    assert tool.tool._instance_dict == {}


def test_verl_base_tool_defaults(tmp_path):
    [tool] = load_tool_config(write(tmp_path, """
        tools:
          - class_name: reference.verl_tools.base_tool.BaseTool
            config: {type: native}
            tool_schema: {type: function, function: {name: noop, description: Does nothing.}}
        """))
    # verl's schema model fills in empty parameters; BaseTool.execute answers a ToolResponse
    assert tool.parameters == {"type": "object", "properties": {}, "required": []}
    assert tool.call({}) == "Updated the tool state."


def test_a_verl_subclass_native_classes_and_functions_in_one_config(tmp_path):
    tools = load_tool_config(write(tmp_path, f"""
        tools:
          - class_name: {__name__}.NotesTool
            config: {{type: native, prefix: "> "}}
          - class_name: {__name__}.NativeWordCount
            config: {{min_length: 3}}
          - class_name: {__name__}.shout
            tool_schema: {{type: function, function: {{name: yell, description: Yell it.}}}}
        """))
    notes, words, yell = tools
    assert [t.name for t in tools] == ["note", "word_count", "yell"]
    assert isinstance(words, NativeWordCount) and words.call({"text": "a bb ccc dddd"}) == "2"
    assert isinstance(yell, FunctionTool) and yell.description == "Yell it." and yell.call({"text": "hi"}) == "HI"
    assert yell.parameters["properties"]["text"]["description"] == "What to shout."

    notes.reset()
    assert notes.call({"text": "one"}) == "> one" and notes.call({"text": "two"}) == "> one; > two"
    assert notes.last_reward == 0.5 and notes.last_metrics == {"n": 2} and notes.episode_reward == 1.0
    assert notes.call({"text": "fail"}) == "Error: RuntimeError: the note service is down"
    notes.timeout_s = 0.2
    assert notes.call({"text": "slow"}) == "Error: TimeoutError: the tool did not answer within 0.2 s"
    notes.close()
    assert NotesTool.live == {}


class Gsm8kEnv(ToolEnv):
    """Passes each task's verl-style tools_kwargs to the tools, and pays the tools' step rewards."""

    def build_prompt(self, task):
        for name, tool in self.tools.items():
            tool.create_kwargs = task.get("tools_kwargs", {}).get(name, {}).get("create_kwargs", {})
        return [{"role": "user", "content": task["question"]}]

    def score(self, answer, task):
        return {"correct": float(answer == task["answer"])}

    def turn_reward(self, turn, outputs):
        return sum(t.last_reward for t in self.tools.values())


def test_verl_tool_in_an_episode(tmp_path):
    tools = load_tool_config(write(tmp_path, GSM8K_CONFIG))
    tasks = [{"question": "6 * 12?", "answer": "72", "tools_kwargs": {"calc_gsm8k_reward": {"create_kwargs": {"ground_truth": "72"}}}}]
    env = Gsm8kEnv(tasks, tools, HermesParser(), max_turns=3)
    call = '<tool_call>{"name": "calc_gsm8k_reward", "arguments": {"answer": "72"}}</tool_call>'
    for _ in range(2):  # a fresh tool instance per episode: the first call is never penalised
        env.reset(seed=0)
        obs, reward, *_ = env.step(call)
        assert obs == "Current parsed answer='72' reward=1.0" and reward == 0.0
        assert env.step(call)[1] == -0.05
    env.close()
    assert tools[0].tool._instance_dict == {}


@pytest.mark.parametrize("config, message", [
    ("tools: [{config: {type: native}}]", "tools[0]: each tool needs a 'class_name' string"),
    ("tools: [{class_name: NoDots}]", "class_name must be a dotted path"),
    ("tools: [{class_name: no_such_pkg.mod.Tool}]", "cannot import module 'no_such_pkg.mod'"),
    ("tools: [{class_name: reference.verl_tools.base_tool.Missing}]", "has no attribute 'Missing'"),
    ("tools: [{class_name: reference.verl_tools.base_tool.BaseTool, config: {type: mcp}}]", "config.type 'mcp' is not supported"),
    ("tools: [{class_name: reference.verl_tools.base_tool.BaseTool, config: {type: native}}]", "the entry has no tool_schema: add one"),
    ("tools: [{class_name: reference.verl_tools.base_tool.BaseTool, tool_schema: {type: function, function: {description: x}}}]",
     "ValidationError"),
    ("tools: [{class_name: reference.verl_tools.base_tool.BaseTool, tool_schema: {function: 3}}]", "tool_schema must be"),
    ("tools: [{class_name: collections.OrderedDict}]", "neither an agentrl Tool"),
    ("tools: [{class_name: agentrl.tools.PythonTool}]", "agentrl.tools.PythonTool(**config) failed: TypeError"),
    ("tools: [{class_name: math.pi}]", "is a float, not a tool class or function"),
    (f"tools: [{{class_name: {__name__}.shout}}, {{class_name: {__name__}.shout}}]", "tool names must be unique, ['shout']"),
    ("tools: {a: 1}", "must be a mapping with a 'tools:' list"),
    ("tools: [unclosed", "is not valid YAML"),
])
def test_bad_configs_name_the_problem(tmp_path, config, message):
    with pytest.raises(ToolConfigError) as e:
        load_tool_config(write(tmp_path, config))
    assert message in str(e.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ToolConfigError, match="cannot read tool config"):
        load_tool_config(tmp_path / "nope.yaml")


def test_tool_response_text_or_nothing():
    from agentrl.verl_tools import _response_text

    assert _response_text(ToolResponse(text="hi")) == "hi"
    assert _response_text(ToolResponse()) == ""
    assert _response_text(ToolResponse(image=["<img>"])).startswith("(the tool returned images")
    assert _response_text(None) == "" and _response_text("plain") == "plain"
