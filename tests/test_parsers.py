from agentrl.parsers import HermesParser, autorefine_parser, extract_boxed, retool_parser, search_r1_parser


def test_retool_code_block_is_unfenced():
    turn = retool_parser().parse("<think>x</think><code>\n```python\nx = 2\nprint(x)\n```\n</code>")
    assert [c.arguments for c in turn.calls] == [{"code": "x = 2\nprint(x)"}]
    assert turn.calls[0].name == "python" and not turn.errors and turn.answer is None


def test_answer_ends_turn_and_ignores_later_calls():
    turn = retool_parser().parse("<answer> 42 </answer><code>print(1)</code>")
    assert turn.answer == "42" and turn.calls == []


def test_boxed_answer_with_nested_braces():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert retool_parser().parse(r"thus \boxed{7}").answer == "7"
    assert extract_boxed(r"\boxed{unclosed") is None


def test_unclosed_and_empty_calls_are_errors_not_exceptions():
    p = search_r1_parser()
    assert p.parse("<search>who is").errors == ["unclosed <search> tag: close it with </search>"]
    assert "empty" in p.parse("<search>  </search>").errors[0]


def test_too_many_calls_in_one_turn():
    turn = search_r1_parser().parse("<search>q</search>" * 50)
    assert turn.calls == [] and "too many" in turn.errors[0]


def test_search_r1_and_autorefine_formats():
    assert search_r1_parser().format_observation(["Doc 1"]) == "\n<information>\nDoc 1\n</information>\n"
    turn = autorefine_parser().parse("<refine>Paris is the capital</refine><search>France capital</search>")
    assert turn.extras["refine"] == ["Paris is the capital"]
    assert turn.calls[0].arguments == {"query": "France capital"}
    assert "<documents>" in autorefine_parser().format_observation(["d"])


def test_hermes_json_calls_and_errors():
    p = HermesParser()
    turn = p.parse('<tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>')
    assert turn.calls[0].name == "python" and turn.calls[0].arguments == {"code": "1"}
    assert p.parse('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"1\\"}"}</tool_call>').calls[0].arguments == {"code": "1"}
    assert "not valid JSON" in p.parse("<tool_call>{oops</tool_call>").errors[0]
    assert "must be" in p.parse('<tool_call>["x"]</tool_call>').errors[0]
    assert p.parse('<tool_call>{"name": "x"').errors == ["unclosed <tool_call> tag"]
    assert p.format_observation(["a", "b"]) == "a\n\nb"
    assert HermesParser(chat=False).format_observation(["out"]) == "<tool_response>\nout\n</tool_response>\n"
