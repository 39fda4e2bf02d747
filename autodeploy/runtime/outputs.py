"""What a request returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" (eos / stop token / stop string), "length", "error", "cancelled"
    error: str | None = None  # set when finish_reason == "error": the cause, in one line
    logprobs: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
