"""Reasoning output: `<think>…</think>` split from the answer into `reasoning_content`.

    "<think>\nFrance's capital…</think>\n\nParis."  ──▶  reasoning "\nFrance's capital…", content "Paris."

Switched on per model family (`reasoning_enabled`): Qwen3, QwQ, DeepSeek-R1 style models, and any
chat template that writes <think>. When the prompt already ends inside the think block (templates
that open it for the model), the output starts as reasoning. Output that never opens a think block
is all content; one that never closes it is all reasoning.
"""

from __future__ import annotations

START, END = "<think>", "</think>"
FAMILIES = {"qwen3", "qwen3_moe", "qwen3_next", "deepseek_v3", "deepseek_r1", "glm4_moe", "ernie4_5", "smollm3"}


def reasoning_enabled(model_type: str | None, chat_template: str | None) -> bool:
    return (model_type or "") in FAMILIES or START in (chat_template or "")


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """The template left the think block open for the model (e.g. DeepSeek-R1's '<think>\\n')."""
    t = prompt_text.rstrip()
    return t.endswith(START)


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feed output text as it streams; each call returns (reasoning piece, content piece)."""

    def __init__(self, starts_in_reasoning: bool = False):
        self.mode = "think" if starts_in_reasoning else "start"  # start | think | gap | content
        self.buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.buf += text
        reasoning = content = ""
        while True:
            if self.mode == "start":  # wait until the output shows whether it opens a think block
                head = self.buf.lstrip()
                if head.startswith(START):
                    self.buf, self.mode = head[len(START):], "think"
                    continue
                if START.startswith(head):  # still maybe "<thi"
                    return reasoning, content
                self.mode = "content"
            if self.mode == "think":
                i = self.buf.find(END)
                if i < 0:
                    keep = _partial_suffix(self.buf, END)
                    reasoning += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return reasoning, content
                reasoning += self.buf[:i]
                self.buf, self.mode = self.buf[i + len(END):], "gap"
            if self.mode == "gap":  # the blank lines between the think block and the answer
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return reasoning, content
                self.mode = "content"
            content += self.buf
            self.buf = ""
            return reasoning, content

    def finish(self) -> tuple[str, str]:
        out, self.buf = self.buf, ""
        if self.mode == "think":
            return out, ""
        return "", out if self.mode != "gap" else ""


def split_reasoning(text: str, starts_in_reasoning: bool = False) -> tuple[str | None, str | None]:
    """(reasoning or None, content or None) of a whole output."""
    s = ReasoningSplitter(starts_in_reasoning)
    r1, c1 = s.feed(text)
    r2, c2 = s.finish()
    reasoning, content = r1 + r2, c1 + c2
    saw_block = starts_in_reasoning or text.lstrip().startswith(START)
    return (reasoning if saw_block else None), (content or None)
