"""Sampling parameters and the per-step token choice.

Greedy unless temperature > 0. Filters apply in the order vLLM and transformers use:
penalties on the raw logits, then temperature, then top-k, top-p and min-p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from autodeploy.errors import RequestError


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # per-request generator: reproducible whatever the batch
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False  # return the log-probability of each chosen token

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RequestError(f"invalid sampling parameter: {msg}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_penalties(logits: torch.Tensor, history: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V]; history [n] token ids of prompt + output (repetition) — output only for presence/frequency."""
    if history.numel() == 0:
        return logits
    if p.repetition_penalty != 1.0:
        seen = torch.unique(history)
        vals = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    return logits


def apply_output_penalties(logits: torch.Tensor, output: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    if output.numel() == 0 or (p.presence_penalty == 0 and p.frequency_penalty == 0):
        return logits
    counts = torch.bincount(output, minlength=logits.shape[-1]).to(logits.dtype)
    return logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on logits [V] (float32); masked entries become -inf."""
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs > p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, idx, sorted_logits)
    if p.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def choose_token(
    logits: torch.Tensor,
    p: SamplingParams,
    prompt_ids: torch.Tensor,
    output_ids: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[int, float | None]:
    """One request's next token from its last-position logits [V]; returns (token, logprob or None)."""
    logits = logits.float()
    logits = apply_penalties(logits, torch.cat([prompt_ids, output_ids]), p)
    logits = apply_output_penalties(logits, output_ids, p)
    if p.greedy:
        token = int(torch.argmax(logits))
        scores = logits
    else:
        scores = filter_logits(logits, p)
        probs = torch.softmax(scores, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
    logprob = float(torch.log_softmax(scores, dim=-1)[token]) if p.logprobs else None
    return token, logprob
