"""Chat messages -> prompt text and token ids through the model's chat template.

Tools go into the template when it renders them (its source mentions `tools`); otherwise they are
described in the system message in the Hermes format, which the hermes parser then reads back:

    <tools>[{"type": "function", "function": {...}}]</tools>
    ... <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>

Assistant tool calls and tool results in the history are written the same way for such templates
(as <tool_call> text and <tool_response> user turns).
"""

from __future__ import annotations

import json
from typing import Any

from autodeploy.server.errors import APIError
from autodeploy.server.schemas import ChatMessage, Tool

TOOL_SYSTEM = (
    "You are a function calling AI model. You may call one or more functions to assist with the user query. "
    "Here are the available tools: <tools>{tools}</tools>\n"
    "For each function call, return a JSON object with the function name and arguments within "
    "<tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
    "</tool_call>"
)


def template_of(tokenizer: Any) -> str | None:
    t = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(t, dict):  # named templates: the default one
        t = t.get("default") or next(iter(t.values()), None)
    return t if isinstance(t, str) else None


def template_renders_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def _text(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for p in m.content:
        if p.type != "text" or p.text is None:
            raise APIError(400, f"messages[{i}]: content parts of type '{p.type}' are not supported (text only)",
                           f"messages.{i}.content", "unsupported_content")
        parts.append(p.text)
    return "".join(parts)


def _arguments(args: str | dict, i: int) -> dict:
    if isinstance(args, dict):
        return args
    try:
        value = json.loads(args or "{}")
    except json.JSONDecodeError:
        raise APIError(400, f"messages[{i}].tool_calls: arguments are not valid JSON",
                       f"messages.{i}.tool_calls") from None
    return value if isinstance(value, dict) else {"value": value}


def build_messages(messages: list[ChatMessage], tools: list[Tool] | None, renders_tools: bool) -> list[dict]:
    """Plain-dict messages for the template; tool turns rewritten as text if it cannot render them."""
    out: list[dict] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        d: dict[str, Any] = {"role": role, "content": _text(m, i)}
        if m.tool_calls:
            calls = [{"id": c.id or f"call_{i}_{k}", "type": "function",
                      "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments, i)}}
                     for k, c in enumerate(m.tool_calls)]
            if renders_tools:
                d["tool_calls"] = calls
            else:
                text = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                              "arguments": c["function"]["arguments"]}) +
                                 "\n</tool_call>" for c in calls)
                d["content"] = (d["content"] + "\n" if d["content"] else "") + text
        if m.role == "tool":
            if renders_tools:
                d.update(tool_call_id=m.tool_call_id, name=m.name)
            else:
                d = {"role": "user", "content": f"<tool_response>\n{d['content']}\n</tool_response>"}
        out.append(d)
    if tools and not renders_tools:
        spec = TOOL_SYSTEM.format(tools=json.dumps([t.model_dump(exclude_none=True) for t in tools]))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + spec}
        else:
            out.insert(0, {"role": "system", "content": spec})
    return out


def render_chat(tokenizer: Any, messages: list[ChatMessage], tools: list[Tool] | None) -> tuple[str, list[int]]:
    """(prompt text, token ids) for a chat request; tools=None when they are off for this request."""
    template = template_of(tokenizer)
    if template is None:
        raise APIError(400, "this model has no chat template; use /v1/completions with a plain prompt",
                       "messages", "no_chat_template")
    renders = template_renders_tools(template)
    msgs = build_messages(messages, tools, renders)
    kwargs = {"tools": [t.model_dump(exclude_none=True) for t in tools]} if tools and renders else {}
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as e:  # jinja raises for histories the template refuses (roles out of order, ...)
        raise APIError(400, f"the chat template rejected the messages: {str(e).splitlines()[0]}",
                       "messages", "invalid_messages") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, list(ids)
