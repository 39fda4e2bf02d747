"""Tool-call parsers (Hermes/Qwen <tool_call>, Llama-3 JSON, forced JSON), whole and streamed: the
stream, cut at every position, assembles to the same calls and content as the whole parse."""

from __future__ import annotations

import json

import pytest

from autodeploy.server.tool_calls import ToolStreamParser, detect_style, parse_tool_calls

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "tags": [1, {"a": "}]\\""}]}}'

CASES = [
    # style, text, expected content, expected [(name, arguments)]
    ("hermes", f"Let me check.<tool_call>\n{WEATHER}\n</tool_call>", "Let me check.",
     [("get_weather", {"city": "Paris", "tags": [1, {"a": '}]"'}]})]),
    ("hermes", '<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]</tool_call>',
     None, [("a", {}), ("b", {"x": 1})]),
    ("hermes", '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", '
               '"arguments": "{\\"y\\": 2}"}</tool_call> after', "after", [("a", {"x": 1}), ("b", {"y": 2})]),
    ("hermes", '<tool_call>{"arguments": {"x": 1}, "name": "b"}</tool_call>', None, [("b", {"x": 1})]),
    ("hermes", '<tool_call>{"name": "a", "arguments": {"x": 1}}', None, [("a", {"x": 1})]),  # no closing tag
    ("hermes", "Paris is the capital. <tool_ is not a tag", "Paris is the capital. <tool_ is not a tag", []),
    ("llama3", '<|python_tag|>{"name": "a", "parameters": {"x": "y"}}; {"name": "b", "parameters": {}}', None,
     [("a", {"x": "y"}), ("b", {})]),
    ("llama3", '  {"name": "get_weather", "parameters": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    ("llama3", 'The answer is {"name": 1}', 'The answer is {"name": 1}', []),
    ("json", WEATHER, None, [("get_weather", {"city": "Paris", "tags": [1, {"a": '}]"'}]})]),
    ("json", '[{"name": "a", "arguments": {"k": "v"}}, {"name": "b", "arguments": {}}]', None,
     [("a", {"k": "v"}), ("b", {})]),
]


def calls_of(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("style, text, content, calls", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_whole_output(style, text, content, calls):
    got_content, got_calls = parse_tool_calls(text, style)
    assert got_content == content
    assert calls_of(got_calls) == calls
    assert len({c.id for c in got_calls}) == len(got_calls) and all(c.id.startswith("call_") for c in got_calls)


def stream(style: str, text: str, step: int, start: int = 0):
    p = ToolStreamParser(style)
    pieces = [text[:start]] + [text[i:i + step] for i in range(start, len(text), step)]
    content, deltas = "", []
    for piece in pieces:
        c, d = p.feed(piece)
        content, deltas = content + c, deltas + d
    c, d = p.finish()
    return content + c, deltas + d, p.saw_calls


@pytest.mark.parametrize("style, text, content, calls", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_stream_cut_anywhere_assembles_to_the_whole_parse(style, text, content, calls):
    for step in (1, 2, 5, len(text)):
        for start in range(0, len(text), max(1, len(text) // 17)):
            got_content, deltas, saw = stream(style, text, step, start)
            assembled: dict[int, list] = {}
            for d in deltas:
                if d.name is not None:
                    assert d.index not in assembled and d.id.startswith("call_")
                    assembled[d.index] = [d.name, ""]
                assembled[d.index][1] += d.arguments
            assert sorted(assembled) == list(range(len(calls)))  # indices 0..k-1, each named once
            assert [(n, json.loads(a)) for _, (n, a) in sorted(assembled.items())] == calls
            assert saw == bool(calls)
            if not calls:
                assert got_content == text
            else:
                assert (got_content.strip() or None) == content


def test_arguments_stream_before_the_call_ends():
    p = ToolStreamParser("hermes")
    _, d1 = p.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    assert [(d.name, d.arguments) for d in d1] == [("get_weather", ""), (None, '{"city": "Pa')]
    _, d2 = p.feed('ris"}}</tool_call>')
    assert "".join(d.arguments for d in d2) == 'ris"}'


def test_style_follows_the_chat_template():
    assert detect_style("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert detect_style("{% if tools %}<|python_tag|>{{ ipython }}{% endif %}") == "llama3"
    assert detect_style("{{ messages }}", "llama") == "hermes"  # no tool support: the server's Hermes prompt
    assert detect_style(None) == "hermes"
    with pytest.raises(ValueError, match="unknown tool-call style"):
        ToolStreamParser("xml")
