"""Tools from plain Python functions: the schema TRL would give the model, calls, errors."""
import asyncio
import multiprocessing
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pytest
from transformers import AutoTokenizer
from transformers.utils import get_json_schema

from agentrl.env import ToolEnv
from agentrl.function_tools import ToolDefinitionError, tool_from_function
from agentrl.model import cached_tiny_model
from agentrl.parsers import HermesParser
from agentrl.tools import Tool, tool_schema

REPO = Path(__file__).resolve().parents[1]


def convert(amount: float, unit: Literal["km", "mi"], digits: int = 2, tags: list[str] | None = None):
    """Convert a distance between kilometres and miles.

    Args:
        amount: The distance to convert.
        unit: The unit of `amount`.
        digits: Digits after the decimal point.
        tags: Labels to echo back
            (a description over two lines).
    """
    factor = 0.621371 if unit == "km" else 1 / 0.621371
    return f"{round(amount * factor, digits)} {tags or ''}".strip()


def lookup(key: str) -> dict[str, int]:
    """Look a key up.

    Args:
        key: The key (choices: ["a", "b"])

    Returns:
        The entry.
    """
    if key == "boom":
        raise KeyError("no such key")
    return {key: 1}


def nothing(x: int) -> None:
    """Return nothing.

    Args:
        x: Ignored.
    """


async def slow_echo(text: str, delay_s: float = 0.0) -> str:
    """Echo after a delay.

    Args:
        text: What to echo.
        delay_s: Seconds to wait first.
    """
    await asyncio.sleep(delay_s)
    return text.upper()


def test_schema_is_what_get_json_schema_gives():
    for fn in (convert, lookup, nothing, slow_echo):
        tool = tool_from_function(fn)
        expected = get_json_schema(fn)["function"]
        assert isinstance(tool, Tool)
        assert (tool.name, tool.description, tool.parameters) == (expected["name"], expected["description"], expected["parameters"])
    params = tool_from_function(convert).parameters
    assert params["required"] == ["amount", "unit"]
    assert params["properties"]["unit"] == {"type": "string", "enum": ["km", "mi"], "description": "The unit of `amount`."}
    assert tool_from_function(lookup).parameters["properties"]["key"]["enum"] == ["a", "b"]


def test_the_model_sees_the_prompt_trl_would_render():
    # TRL's GRPOTrainer(tools=[fn]) hands the callables to apply_chat_template, which converts them
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model())
    messages = [{"role": "user", "content": "How far is 10 km in miles?"}]
    trl = tokenizer.apply_chat_template(messages, tools=[convert], add_generation_prompt=True, tokenize=False)
    ours = tokenizer.apply_chat_template(messages, tools=[tool_schema(tool_from_function(convert))],
                                         add_generation_prompt=True, tokenize=False)
    assert ours == trl and '"enum": ["km", "mi"]' in ours


def test_calls_pass_kwargs_and_return_text():
    assert tool_from_function(convert).call({"amount": 10, "unit": "km", "digits": 1}) == "6.2"
    assert tool_from_function(lookup).call({"key": "a"}) == "{'a': 1}"
    assert tool_from_function(nothing).call({"x": 1}) == ""  # None -> ""


def test_failures_are_error_texts_not_exceptions():
    assert tool_from_function(lookup).call({"key": "boom"}) == "Error: KeyError: 'no such key'"
    wrong = tool_from_function(lookup).call({"keyy": "a"})
    assert wrong.startswith("Error: TypeError:") and "keyy" in wrong
    assert tool_from_function(lookup).call(["a"]).startswith("Error: the arguments of 'lookup' must be a JSON object")


def test_async_functions_run_from_any_thread_with_a_timeout():
    tool = tool_from_function(slow_echo)
    assert tool.call({"text": "hi"}) == "HI"
    with ThreadPoolExecutor(8) as pool:  # the collector calls tools from worker threads
        outs = list(pool.map(lambda i: tool.call({"text": f"t{i}", "delay_s": 0.05}), range(16)))
    assert outs == [f"T{i}" for i in range(16)]

    async def inside_a_running_loop():  # asyncio.run per call would fail here
        return tool.call({"text": "loop"})
    assert asyncio.run(inside_a_running_loop()) == "LOOP"
    timed = tool_from_function(slow_echo, timeout_s=0.2)
    assert timed.call({"text": "x", "delay_s": 5}) == "Error: TimeoutError: the tool did not answer within 0.2 s"


def _call_in_child(tool, queue):
    queue.put(tool.call({"text": "child"}))


def test_async_tools_work_in_a_forked_child():
    # AsyncVectorEnv forks its workers: the child inherits the loop object, not the thread running it
    tool = tool_from_function(slow_echo, timeout_s=10)
    assert tool.call({"text": "parent"}) == "PARENT"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_call_in_child, args=(tool, queue))
    child.start()
    assert queue.get(timeout=30) == "CHILD"
    child.join(30)


def test_making_tools_and_the_example_env_does_not_import_torch():
    code = ("import sys; sys.path.insert(0, 'examples/agentrl-sqlite-env'); import gymnasium as gym\n"
            "from agentrl.function_tools import tool_from_function\n"
            "from agentrl_sqlite_env.env import ShopSQLEnv\n"
            "env = ShopSQLEnv(); env.reset(seed=0); env.close()\n"
            "assert tool_from_function(env.db.query).parameters['required'] == ['sql']\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_methods_name_and_description_overrides():
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k: int) -> int:
            """Add to the counter.

            Args:
                k: How much to add.
            """
            self.n += k
            return self.n

    counter = Counter()
    tool = tool_from_function(counter.add, name="count", description="Count up.")
    assert (tool.name, tool.description, list(tool.parameters["properties"])) == ("count", "Count up.", ["k"])
    assert tool.call({"k": 2}) == "2" and tool.call({"k": 3}) == "5"


class Point:
    pass


def no_doc(x: int):
    return x


def no_hint(x):
    """Doc.

    Args:
        x: A value.
    """


def undocumented_arg(x: int, y: int):
    """Doc.

    Args:
        x: A value.
    """


def custom_type(p: Point):
    """Doc.

    Args:
        p: A point.
    """


@pytest.mark.parametrize("fn, expected", [
    (no_doc, "'no_doc' has no docstring: add a Google-style docstring"),
    (no_hint, "Argument x is missing a type hint in function no_hint. Give every argument a JSON-compatible type hint"),
    (undocumented_arg, "the docstring has no description for the argument 'y'. Describe every argument under 'Args:'"),
    (custom_type, "Give every argument a JSON-compatible type hint"),
    (print, "a tool must be a Python function or method"),
    ("convert", "a tool must be a Python function or method"),
])
def test_bad_functions_say_what_to_add(fn, expected):
    with pytest.raises(ToolDefinitionError) as e:
        tool_from_function(fn)
    assert expected in str(e.value)
    if callable(fn) and hasattr(fn, "__name__") and fn is not print:
        assert fn.__name__ in str(e.value)


class ConvertEnv(ToolEnv):
    def build_prompt(self, task):
        return [{"role": "user", "content": task["question"]}]

    def score(self, answer, task):
        return {"correct": float(answer == task["answer"])}


def test_a_function_tool_in_a_tool_env():
    env = ConvertEnv([{"question": "10 km in miles?", "answer": "6.21"}], [tool_from_function(convert)], HermesParser())
    env.reset(seed=0)
    assert env.tool_schemas[0]["function"]["parameters"] == get_json_schema(convert)["function"]["parameters"]
    obs, reward, terminated, _, info = env.step('<tool_call>{"name": "convert", "arguments": {"amount": 10, "unit": "km"}}</tool_call>')
    assert obs == "6.21" and info["tool_outputs"] == ["6.21"] and not terminated
    _, reward, terminated, _, _ = env.step("<answer>6.21</answer>")
    assert reward == 1.0 and terminated
