"""The batched sampler: one step's next tokens for every sequence that finished its chunk.

    logits [b, V] ──penalties──▶ ──min_tokens mask──▶ ──logits processors──▶ greedy rows: argmax
                                                      sampled rows: /temperature, top-k, top-p,
                                                      min-p, then argmax(probs / Exp(1) noise)

Sampling uses the exponential race (argmax of p_i / E_i with E_i ~ Exp(1) is a draw from p) so
all sampled rows pick their token in one batched argmax, while each row's noise comes from its
request's own torch.Generator: a seeded request draws the same tokens whatever else shares the
step, and a recomputed (preempted) request draws nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from autodeploy.backends import triton_kernel
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams

NEG_INF = float("-inf")
MIN_CHUNK = 512  # argmax_rows: vocab entries per chunk, at least
MAX_CHUNKS = 256


def _argmax_kernel():
    """backends/triton/argmax.py, or None without a usable Triton."""
    return triton_kernel("argmax")


def argmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """scores [n, V] -> [n] int64: the first index of each row's maximum, as scores.argmax(-1).

    Why not argmax(-1) itself: on CUDA it reduces a row in few blocks, 27 us for one 128256-wide row on an
    H200 (an 8B decode step's ~1%, measured in a TP=2 profile). On CUDA a Triton kernel does it in one
    launch (backends/triton/argmax.py). Elsewhere the row is cut into up to MAX_CHUNKS equal chunks
    reduced in parallel (max with indices), then the chunk maxima: the first chunk holding the maximum,
    and its first index, give the first index overall (NaN propagates as in argmax: it is the maximum of
    its chunk and of the chunk maxima) — five launches on a GPU, ~15 us of kernels between two steps."""
    if scores.is_cuda:
        kernel = _argmax_kernel()
        if kernel is not None and kernel.supports(scores):
            return kernel.launch(scores)
    n, v = scores.shape
    chunks = 1
    while chunks < MAX_CHUNKS and v % (2 * chunks) == 0 and v // (2 * chunks) >= MIN_CHUNK:
        chunks *= 2
    if chunks == 1:
        return scores.argmax(-1)
    values, index = scores.view(n, chunks, v // chunks).max(-1)  # [n, chunks] each
    best = values.argmax(-1, keepdim=True)  # [n, 1]: the first chunk holding the row's maximum
    return best[:, 0] * (v // chunks) + index.gather(-1, best)[:, 0]


@dataclass
class PenaltyState:
    """Per-request token statistics, kept on the logits' device and updated with each new token."""

    seen: torch.Tensor  # [V] bool: in prompt or output (repetition penalty)
    counts: torch.Tensor  # [V] float32: occurrences in the output (presence / frequency)
    num_counted: int  # output tokens already in `counts`


def _penalty_state(req: Request, vocab: int, device: torch.device) -> PenaltyState:
    st = req.sampler_state
    if st is None:
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        prompt = torch.tensor(req.prompt_token_ids, dtype=torch.long, device=device)
        seen[prompt[prompt < vocab]] = True
        st = req.sampler_state = PenaltyState(seen, torch.zeros(vocab, dtype=torch.float32, device=device), 0)
    new = req.output_token_ids[st.num_counted :]
    if new:
        ids = torch.tensor(new, dtype=torch.long, device=device)
        st.seen[ids] = True
        st.counts.index_add_(0, ids, torch.ones(len(new), dtype=torch.float32, device=device))
        st.num_counted += len(new)
    return st


def apply_penalties(logits: torch.Tensor, reqs: Sequence[Request]) -> torch.Tensor:
    """logits [b, V] float32, penalized in place for the rows that ask for it."""
    rows = [i for i, r in enumerate(reqs) if r.sampling.has_penalties]
    if not rows:
        return logits
    vocab, dev = logits.shape[-1], logits.device
    states = [_penalty_state(reqs[i], vocab, dev) for i in rows]
    params = [reqs[i].sampling for i in rows]
    idx = torch.tensor(rows, device=dev)
    sub = logits[idx]  # [n, V]
    seen = torch.stack([s.seen for s in states])  # [n, V]
    counts = torch.stack([s.counts for s in states])  # [n, V]
    rep = _column([p.repetition_penalty for p in params], dev)[:, None]
    # repetition (CTRL / transformers): divide positive logits, multiply negative ones
    sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    freq = _column([p.frequency_penalty for p in params], dev)[:, None]
    pres = _column([p.presence_penalty for p in params], dev)[:, None]
    sub = sub - freq * counts - pres * (counts > 0).float()
    logits[idx] = sub
    return logits


def _masks_stops(r: Request) -> bool:
    """Whether mask_early_stops edits r's row this step."""
    return bool(r.sampling.min_tokens > r.num_output and r.stop_ids)


def mask_early_stops(logits: torch.Tensor, reqs: Sequence[Request]) -> torch.Tensor:
    """Stop tokens cannot be chosen before a request has min_tokens outputs."""
    for i, r in enumerate(reqs):
        if _masks_stops(r):
            ids = [t for t in r.stop_ids if t < logits.shape[-1]]
            logits[i, ids] = NEG_INF
    return logits


def apply_logits_processors(logits: torch.Tensor, reqs: Sequence[Request]) -> torch.Tensor:
    """Each request's own processors rewrite its row (e.g. a grammar's allowed-token mask)."""
    for i, r in enumerate(reqs):
        if r.sampling.logits_processors:
            out = r.output_token_ids
            for proc in r.sampling.logits_processors:
                logits[i] = proc(out, logits[i])
    return logits


def filter_logits(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p, row by row in one batch: logits [n, V] -> scores [n, V]."""
    dev = logits.device
    temp = _column([p.temperature for p in params], dev)[:, None]
    scores = logits / temp
    if not any(p.has_filters for p in params):
        return scores
    vocab = scores.shape[-1]
    sorted_scores, order = scores.sort(dim=-1, descending=True)  # [n, V]
    rank = torch.arange(vocab, device=dev)[None, :]
    top_k = _column([p.top_k if p.top_k > 0 else vocab for p in params], dev)[:, None]
    sorted_scores = sorted_scores.masked_fill(rank >= top_k, NEG_INF)
    top_p = _column([p.top_p for p in params], dev)[:, None]
    probs = sorted_scores.softmax(-1)
    # keep the smallest prefix whose mass reaches top_p; the most likely token always stays
    sorted_scores = sorted_scores.masked_fill(probs.cumsum(-1) - probs > top_p, NEG_INF)
    min_p = _column([p.min_p for p in params], dev)[:, None]
    probs = sorted_scores.softmax(-1)
    sorted_scores = sorted_scores.masked_fill(probs < min_p * probs[:, :1], NEG_INF)
    return torch.full_like(scores, NEG_INF).scatter(-1, order, sorted_scores)


def exponential_noise(reqs: Sequence[Request], vocab: int, device: torch.device) -> torch.Tensor:
    """[n, V] Exp(1) draws, row i from request i's own generator."""
    noise = torch.empty(len(reqs), vocab, device=device)
    for i, r in enumerate(reqs):
        noise[i].exponential_(generator=r.generator)
    return noise.clamp_min_(torch.finfo(noise.dtype).tiny)  # a 0 draw would divide by zero


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float | None]


class Sampler:
    """Picks the next token of each request from its last-position logits."""

    def __call__(self, logits: torch.Tensor, reqs: Sequence[Request]) -> SampleResult:
        """Tokens and logprobs as Python values (reads them back from the device)."""
        if not reqs:
            return SampleResult([], [])
        tokens, logprobs = self.sample(logits, reqs)
        lps = logprobs.tolist() if logprobs is not None else [None] * len(reqs)
        return SampleResult(tokens.tolist(), [lp if r.sampling.logprobs else None for lp, r in zip(lps, reqs)])

    def sample(self, logits: torch.Tensor, reqs: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tokens [n] int64 and, when any request asks, logprobs [n] float32 — both left on the
        logits' device, with no host sync (the overlapped engine reads them a step later)."""
        # [b, V] float32; penalties, masks and processors edit it in place, so they get a copy (a greedy or
        # sampled batch without them reads the model's logits as they are: one launch fewer a step)
        edits = any(r.sampling.has_penalties or r.sampling.logits_processors or _masks_stops(r) for r in reqs)
        logits = logits.to(torch.float32, copy=edits)
        vocab, dev = logits.shape[-1], logits.device
        logits = apply_penalties(logits, reqs)
        logits = mask_early_stops(logits, reqs)
        logits = apply_logits_processors(logits, reqs)
        tokens = argmax_rows(logits)  # greedy rows keep this
        scores = logits
        sampled = [i for i, r in enumerate(reqs) if not r.sampling.greedy]
        if sampled:
            idx = _index(sampled, dev)
            sub = filter_logits(logits[idx], [reqs[i].sampling for i in sampled])
            noise = exponential_noise([reqs[i] for i in sampled], vocab, dev)
            tokens[idx] = argmax_rows(sub.softmax(-1) / noise)
            scores = logits.clone()
            scores[idx] = sub
        if not any(r.sampling.logprobs for r in reqs):
            return tokens, None
        return tokens, scores.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]


def _column(values: list, device: torch.device) -> torch.Tensor:
    """Per-row parameters [n] on `device` via pinned memory (a pageable copy would wait for the GPU)."""
    host = torch.tensor(values)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def _index(values: list[int], device: torch.device) -> torch.Tensor:
    """An index tensor on `device` through pinned memory: a pageable copy would wait for the GPU."""
    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)
