"""The <think> splitter, whole and streamed at every cut, and its switch per model family."""

from __future__ import annotations

import pytest

from autodeploy.server.reasoning import (ReasoningSplitter, prompt_opens_reasoning, reasoning_enabled,
                                         split_reasoning)

CASES = [
    # text, starts in reasoning, reasoning, content
    ("<think>\nThe capital of France is Paris.\n</think>\n\nParis.", False, "\nThe capital of France is Paris.\n",
     "Paris."),
    ("  <think>a < b </thin k></think>Answer", False, "a < b </thin k>", "Answer"),
    ("No thinking here: <think> is just text", False, None, "No thinking here: <think> is just text"),
    ("<think>never closed", False, "never closed", None),
    ("opened by the template</think>\n\nParis", True, "opened by the template", "Paris"),
    ("<think></think>", False, "", None),
    ("<thi", False, None, "<thi"),
]


@pytest.mark.parametrize("text, opened, reasoning, content", CASES)
def test_split_whole(text, opened, reasoning, content):
    assert split_reasoning(text, opened) == (reasoning, content)


@pytest.mark.parametrize("text, opened, reasoning, content", CASES)
def test_split_streamed_at_every_cut(text, opened, reasoning, content):
    for step in (1, 2, 3, 7):
        s = ReasoningSplitter(opened)
        r_all = c_all = ""
        for i in range(0, len(text), step):
            r, c = s.feed(text[i:i + step])
            r_all, c_all = r_all + r, c_all + c
        r, c = s.finish()
        r_all, c_all = r_all + r, c_all + c
        assert r_all == (reasoning or "") and c_all == (content or "")


def test_tags_never_leak_into_a_stream():
    s = ReasoningSplitter()
    outs = [s.feed(p) for p in ["<", "thi", "nk>", "x", "</", "think", ">", "y"]]
    assert "".join(r for r, _ in outs) == "x" and "".join(c for _, c in outs) == "y"
    assert all("<" not in r + c for r, c in outs)


def test_switched_on_per_family():
    assert reasoning_enabled("qwen3", None) and reasoning_enabled("deepseek_v3", "")
    assert reasoning_enabled("llama", "{{ '<think>' }}")
    assert not reasoning_enabled("llama", "{% for m in messages %}{% endfor %}")
    assert prompt_opens_reasoning("<|Assistant|><think>\n") and not prompt_opens_reasoning("<|assistant|>\n")


def test_chat_choice_splits_reasoning_before_parsing_tool_calls():
    from autodeploy.server.routes.chat import Plan, _choice

    text = '<think>The user wants weather.</think>\n<tool_call>{"name": "w", "arguments": {"city": "Paris"}}</tool_call>'
    c = _choice(0, text, "stop", Plan(True, "hermes", None, None, True, False))
    assert c.message.reasoning_content == "The user wants weather." and c.message.content is None
    assert c.finish_reason == "tool_calls" and c.message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    plain = _choice(0, "<think>hm</think>Paris.", "stop", Plan(False, None, None, None, True, False))
    assert (plain.message.reasoning_content, plain.message.content, plain.finish_reason) == ("hm", "Paris.", "stop")
    off = _choice(0, "<think>hm</think>Paris.", "length", Plan(False, None, None, None, False, False))
    assert off.message.reasoning_content is None and off.message.content == "<think>hm</think>Paris."
