"""What a request returns: the final RequestOutput, the StreamDelta pieces a stream yields, and
the incremental detokenizer that turns new token ids into new text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (eos / stop token / stop string), "length", "error", "cancelled"
    error: str | None = None  # set when finish_reason == "error": the cause, in one line
    logprobs: list[float] | None = None
    request_id: str = ""
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    num_preemptions: int = 0  # times the request was preempted and its KV recomputed

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StreamDelta:
    """New output since the previous delta of the same request; the last one has `finished` set."""

    request_id: str
    token_ids: list[int]
    text: str = ""
    logprobs: list[float] | None = None
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None


class Detokenizer:
    """Incremental decode: text is released only once it no longer ends in a partial character.

    Decoding a token alone loses context (SentencePiece drops a word's leading space, a multi-byte
    character spans tokens), so each push decodes a short window that starts a few tokens back and
    keeps the part past what that window's head already produced.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window's context starts here
        self.read_offset = 0  # ids before here have produced their text
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; returns the text they complete (may be empty while a character is partial)."""
        self.ids.extend(token_ids)
        if self.tokenizer is None:
            return ""
        head = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) <= len(head) or full.endswith("\ufffd"):
            return ""
        new = full[len(head) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new
        return new

    def flush(self) -> str:
        """At the end: whatever is pending, partial character or not."""
        if self.tokenizer is None or self.read_offset == len(self.ids):
            return ""
        head = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        new = full[len(head) :] if len(full) > len(head) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += new
        return new
