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


# -- hostile text: linear scans, and every JSON failure is an error -----------------------------
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from agentrl.parsers import MAX_JSON_DEPTH, find_tagged, load_json  # noqa: E402

MB = 1 << 20


def test_find_tagged_finds_what_the_non_greedy_regex_finds():
    rng = random.Random(0)
    pieces = ["<c>", "</c>", "x", "<", ">", "/", "c", "\n"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        spans, unclosed = find_tagged(text, "<c>", "</c>")
        assert [text[a:b] for a, b in spans] == re.findall(r"<c>(.*?)</c>", text, re.S)
        tail = text[spans[-1][1] + len("</c>"):] if spans else text
        assert (unclosed is not None) == ("<c>" in tail)


@pytest.mark.parametrize("parser,opener", [
    (retool_parser(), "<code>"), (search_r1_parser(), "<search>"), (autorefine_parser(), "<refine>"),
    (HermesParser(), "<tool_call>"), (HermesParser(), "<answer>"), (retool_parser(), "\\boxed{"),
    (retool_parser(), "<code>```"), (HermesParser(), "<tool_call>["),
], ids=["code", "search", "refine", "tool_call", "answer", "boxed", "fence", "json"])
def test_a_megabyte_of_openers_parses_in_well_under_a_second(parser, opener):
    text = (opener * (MB // len(opener) + 1))[:MB]
    start = time.perf_counter()
    turn = parser.parse(text)
    assert time.perf_counter() - start < 1.0  # the old regexes took seconds for 8k openers
    assert turn.calls == [] or opener == "<code>```"


def test_every_json_failure_is_an_error_not_an_exception():
    p = HermesParser()
    call = '<tool_call>{{"name": "python", "arguments": {}}}</tool_call>'
    cases = {
        "[" * 100_000: "nested too deeply",  # RecursionError inside json.loads
        '{"code": ' + "1" * 5000 + "}": "too many digits",  # ValueError: int past sys.get_int_max_str_digits()
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1): "nested deeper than",
        "{oops": "not valid JSON",
    }
    for arguments, expected in cases.items():
        turn = p.parse(call.format(arguments))
        assert turn.calls == [] and len(turn.errors) == 1 and expected in turn.errors[0], turn.errors
    # arguments given as a JSON string are decoded by the same guarded loader
    deep = '<tool_call>{"name": "python", "arguments": "' + "[" * 100_000 + '"}</tool_call>'
    assert "must be" in p.parse(deep).errors[0]
    assert load_json("[1, [2, [3]]]") == ([1, [2, [3]]], None)


def test_hermes_runs_calls_up_to_max_parallel_calls():
    call = '<tool_call>{{"name": "python", "arguments": {{"code": "{}"}}}}</tool_call>'
    turn = HermesParser(max_parallel_calls=2).parse("\n".join(call.format(i) for i in range(5)))
    assert [c.arguments["code"] for c in turn.calls] == ["0", "1"]
    assert turn.errors == ["too many tool calls in one turn: ran the first 2 of 5"]
    assert len(HermesParser().parse("".join(call.format(i) for i in range(4))).calls) == 4
    with pytest.raises(ValueError):
        HermesParser(max_parallel_calls=0)


def test_code_fences():
    clean = retool_parser()._clean
    assert clean("```python\nx = 1\n```") == "x = 1"
    assert clean("```\nx = 1\n```") == "x = 1"
    assert clean("```print(1)```") == "print(1)"  # no newline: no language name to strip
    assert clean("```") == "```"
    start = time.perf_counter()
    assert clean("```" + "a" * MB).startswith("```")  # the old fence regex backtracked quadratically here
    assert time.perf_counter() - start < 1.0
