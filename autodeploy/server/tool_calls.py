"""Tool calls in model output, parsed into OpenAI `tool_calls`, whole or as stream deltas.

Styles (picked per model family from its chat template, see `detect_style`):

    hermes   Hermes / Qwen / SmolLM:  text <tool_call>{"name": "f", "arguments": {...}}</tool_call> ...
             (the body may also be a JSON list of such calls)
    llama3   Llama 3.x JSON: the whole output is {"name": "f", "parameters": {...}}, optionally after
             <|python_tag|>, several separated by ';'
    json     the constrained sampler's forced output: one call object, or a list of them

Output that does not parse as calls stays content: a model that writes a malformed call gets its
text back rather than an error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

STYLES = ("hermes", "llama3", "json")
OPEN, CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = field(default_factory=_call_id)


@dataclass
class ToolDelta:
    """A piece of a streamed call: the first names it (id, name), later ones add argument text."""

    index: int
    arguments: str = ""
    name: str | None = None
    id: str | None = None


def detect_style(chat_template: str | None, model_type: str | None = None) -> str:
    """llama3 for templates that write Llama 3's tool turns (python_tag / ipython); else hermes, which
    is also the format the server describes tools in for templates that cannot render them."""
    t = chat_template or ""
    return "llama3" if "tools" in t and (PYTHON_TAG in t or "ipython" in t) else "hermes"


def _as_calls(value: Any) -> list[ToolCall] | None:
    """A call object or a list of them -> ToolCalls; None if it is not that shape."""
    items = value if isinstance(value, list) else [value]
    out = []
    for d in items:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            return None
        args = d.get("arguments", d.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        out.append(ToolCall(d["name"], json.dumps(args, ensure_ascii=False)))
    return out or None


def _json_values(text: str, separators: str = ";") -> list[Any] | None:
    """Consecutive JSON values in `text` separated by whitespace or `separators`; None if anything else."""
    dec, pos, out = json.JSONDecoder(), 0, []
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return out
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        out.append(value)


def parse_tool_calls(text: str, style: str) -> tuple[str | None, list[ToolCall]]:
    """(content left over or None, calls) from a whole output."""
    if style == "json":
        values = _json_values(text, ",")
        calls = [c for v in values or [] for c in (_as_calls(v) or [])]
        return (None, calls) if values and len(calls) >= len(values) else (text or None, [])
    if style == "llama3":
        body = text.strip()
        body = body[len(PYTHON_TAG):] if body.startswith(PYTHON_TAG) else body
        values = _json_values(body) if body.startswith("{") else None
        calls = [_as_calls(v) for v in values or []]
        if values and all(calls):
            return None, [c for cs in calls for c in cs]
        return text or None, []
    calls: list[ToolCall] = []
    content = []
    pos = 0
    for m in re.finditer(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", text, re.S):
        values = _json_values(m.group(1).strip())
        parsed = [_as_calls(v) for v in values or []]
        if not values or not all(parsed):
            return text or None, []
        content.append(text[pos:m.start()])
        calls.extend(c for cs in parsed for c in cs)
        pos = m.end()
    content.append(text[pos:])
    rest = "".join(content).strip()
    return (rest or None) if calls else (text or None), calls


# ---- streaming ----------------------------------------------------------------------------------
_HEAD = re.compile(r'\s*\}?\s*[\[,;]?\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


class _CallStreamer:
    """Streams JSON call objects (`{"name": .., "arguments": {..}}`, maybe in a list) as ToolDeltas:
    the name once it is complete, then the arguments text as it arrives. Text in another shape
    (keys in the other order) is parsed whole at the end instead."""

    def __init__(self, first_index: int):
        self.buf = ""
        self.pos = 0
        self.index = first_index
        self.in_args = False
        self.depth = 0
        self.in_str = self.esc = False
        self.args_started = False
        self.streamed: list[int] = []  # indices of calls streamed

    def feed(self, text: str) -> list[ToolDelta]:
        self.buf += text
        out: list[ToolDelta] = []
        while True:
            if not self.in_args:
                m = _HEAD.match(self.buf, self.pos)
                if m is None:
                    return out
                name = json.loads(f'"{m.group(1)}"')
                out.append(ToolDelta(self.index, "", name, _call_id()))
                self.streamed.append(self.index)
                self.pos, self.in_args, self.depth, self.args_started = m.end(), True, 0, False
                continue
            rest = self.buf[self.pos:].lstrip()
            if not self.args_started and rest.startswith('"'):  # arguments as a JSON string: sent decoded, whole
                try:
                    value, end = json.JSONDecoder().raw_decode(rest)
                except json.JSONDecodeError:
                    return out  # not complete yet
                out.append(ToolDelta(self.index, value if isinstance(value, str) else json.dumps(value)))
                self.pos = len(self.buf) - len(rest) + end
                self.in_args = False
                self.index += 1
                continue
            start = i = self.pos
            while i < len(self.buf):
                c = self.buf[i]
                i += 1
                if self.in_str:
                    if self.esc:
                        self.esc = False
                    elif c == "\\":
                        self.esc = True
                    elif c == '"':
                        self.in_str = False
                elif c == '"':
                    self.in_str = True
                elif c in "{[":
                    self.depth += 1
                elif c in "}]":
                    self.depth -= 1
                    if self.depth == 0:
                        break
            piece = self.buf[start:i] if self.args_started else self.buf[start:i].lstrip()
            if piece:
                self.args_started = True
                out.append(ToolDelta(self.index, piece))
            self.pos = i
            if self.depth == 0 and i > start and self.buf[i - 1] in "}]":
                self.in_args = False
                self.index += 1
                continue
            return out

    def finish(self) -> list[ToolDelta]:
        """At the end: calls that never streamed (another key order) come whole."""
        if self.streamed:
            return []
        values = _json_values(self.buf, ",;")
        calls = [c for v in values or [] for c in (_as_calls(v) or [])]
        out = []
        for c in calls:
            out.append(ToolDelta(self.index, c.arguments, c.name, c.id))
            self.index += 1
        return out


class ToolStreamParser:
    """Feed output text as it streams; get back (content text, tool-call deltas) per piece."""

    def __init__(self, style: str):
        if style not in STYLES:
            raise ValueError(f"unknown tool-call style {style!r} (known: {', '.join(STYLES)})")
        self.style = style
        self.buf = ""  # text not yet classified
        self.mode = "call" if style == "json" else "start" if style == "llama3" else "text"
        self.calls = _CallStreamer(0) if style == "json" else None
        self.next_index = 0  # of the next call a new <tool_call> block starts
        self.num_calls = 0

    @property
    def saw_calls(self) -> bool:
        return self.num_calls > 0

    def _count(self, deltas: list[ToolDelta]) -> list[ToolDelta]:
        self.num_calls += sum(1 for d in deltas if d.name is not None)
        return deltas

    def feed(self, text: str) -> tuple[str, list[ToolDelta]]:
        if self.mode == "call" and self.style != "hermes":
            return "", self._count(self.calls.feed(text))
        self.buf += text
        if self.mode == "start":  # llama3: calls only when the output opens with '{' or the python tag
            head = self.buf.lstrip()
            if not head or PYTHON_TAG.startswith(head[: len(PYTHON_TAG)]) and len(head) < len(PYTHON_TAG):
                return "", []
            if head.startswith(PYTHON_TAG) or head.startswith("{"):
                self.mode, self.calls = "call", _CallStreamer(0)
                body = head[len(PYTHON_TAG):] if head.startswith(PYTHON_TAG) else head
                self.buf = ""
                return "", self._count(self.calls.feed(body))
            self.mode = "text"
            out, self.buf = self.buf, ""
            return out, []
        return self._feed_hermes()

    def _feed_hermes(self) -> tuple[str, list[ToolDelta]]:
        content, deltas = "", []
        while True:
            if self.mode == "text":
                i = self.buf.find(OPEN)
                if i < 0:
                    keep = _partial_suffix(self.buf, OPEN)
                    content += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return content, self._count(deltas)
                content += self.buf[:i]
                self.buf = self.buf[i + len(OPEN):]
                self.mode, self.calls = "call", _CallStreamer(self.next_index)
            j = self.buf.find(CLOSE)
            body = self.buf if j < 0 else self.buf[:j]
            keep = 0 if j >= 0 else _partial_suffix(body, CLOSE)
            deltas += self.calls.feed(body[: len(body) - keep])
            if j < 0:
                self.buf = body[len(body) - keep:]
                return content, self._count(deltas)
            deltas += self.calls.finish()
            self.next_index = self.calls.index
            self.buf = self.buf[j + len(CLOSE):]
            self.mode = "text"

    def finish(self) -> tuple[str, list[ToolDelta]]:
        """Flush at the end of the output."""
        if self.mode == "call":
            rest = self.calls.feed(self.buf) if self.style == "hermes" else []
            self.buf = ""
            return "", self._count(rest + self.calls.finish())
        out, self.buf = self.buf, ""
        return out, []


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag` (held back: a tag may follow)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
