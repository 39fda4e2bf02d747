"""A request and its life in the engine.

    submit ──▶ WAITING ──schedule──▶ RUNNING ──▶ FINISHED (stop | length | cancelled | error)
                  ▲                     │
                  └──── preempted ──────┘  (pages freed; the KV is recomputed on resume)

`token_ids` is prompt + output so far; `num_computed` of them have their K/V in the pool's
pages. Each step computes the next chunk `token_ids[num_computed : num_computed + n]`; when a
chunk reaches the end of `token_ids`, the step's logits sample the next token. A preempted
request keeps its output and recomputes prompt + output on resume, so its sampling is unchanged.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from autodeploy.runtime.outputs import Detokenizer, RequestOutput, StreamDelta
from autodeploy.runtime.sampling import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, repr=False)
class Request:
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None  # the text, when the request came as text
    priority: int = 0  # lower runs first (the priority policy); ties go by arrival
    request_id: str = ""

    # ---- set by the engine ---------------------------------------------------------------------
    status: Status = Status.WAITING
    arrival: int = 0  # submission order
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    num_computed: int = 0  # leading token_ids whose K/V are in `pages`
    pages: list[int] = field(default_factory=list)
    page_hashes: list[bytes] = field(default_factory=list)  # hash chain of its full pages
    num_registered: int = 0  # leading pages already offered to the prefix cache
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (last admission)
    num_preemptions: int = 0
    generator: torch.Generator | None = None
    stop_ids: frozenset[int] = frozenset()
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    error: str | None = None
    text: str = ""  # output text so far (cut at a stop string)
    num_text_sent: int = 0  # characters of `text` already streamed
    detok: Detokenizer | None = None
    events: deque[StreamDelta] = field(default_factory=deque)  # streamed, not yet consumed
    sampler_state: Any = None  # penalty bookkeeping owned by the sampler
    finishing: bool = False  # its last token is sampled (ends by length): never scheduled again

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = f"req-{next(_ids)}"
        self.prompt_token_ids = list(self.prompt_token_ids)
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, {self.status.value}, prompt={self.num_prompt}, "
                f"output={self.num_output}, computed={self.num_computed}, pages={len(self.pages)})")

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt:]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    def output(self) -> RequestOutput:
        return RequestOutput(
            prompt=self.prompt,
            prompt_token_ids=list(self.prompt_token_ids),
            token_ids=self.output_token_ids,
            text=self.text,
            finish_reason=self.finish_reason,
            error=self.error,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            request_id=self.request_id,
            num_cached_tokens=self.num_cached_tokens,
            num_preemptions=self.num_preemptions,
        )
