"""Accuracy of a quantized model: SQNR of an output, perplexity of a text.

    sqnr(actual, reference)      10 log10(|ref|^2 / |ref - actual|^2) in dB (inf when equal)
    perplexity(logits_fn, ids)   exp(mean next-token negative log-likelihood) over one token sequence
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def sqnr(actual: Tensor, reference: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB; higher is better (each 6 dB ~ one more bit)."""
    ref = reference.detach().double()
    noise = (ref - actual.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def noise_ratio(actual: Tensor, reference: Tensor) -> float:
    """|ref - actual|^2 / |ref|^2 (the linear form of -SQNR): what sensitivity budgets add up."""
    ref = reference.detach().double()
    return (ref - actual.detach().double()).pow(2).sum().item() / max(ref.pow(2).sum().item(), 1e-30)


@torch.no_grad()
def nll(logits_fn: Callable[[Tensor, Tensor], Tensor], ids: Tensor, window: int = 512) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of ids [n] and the count of predicted tokens.

    The text is cut into windows of `window` tokens scored independently (each from position 0), so a
    long text never needs a longer context than the model's limit.
    """
    total, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window + 1]
        if chunk.numel() < 2:
            break
        inp = chunk[:-1].unsqueeze(0)  # [1, s]
        pos = torch.arange(inp.shape[1]).unsqueeze(0)
        logits = logits_fn(inp, pos)[0].float()  # [s, vocab]
        total += F.cross_entropy(logits, chunk[1:].to(logits.device), reduction="sum").item()
        count += chunk.numel() - 1
    return total, count


def perplexity(logits_fn: Callable[[Tensor, Tensor], Tensor], ids: Tensor, window: int = 512) -> float:
    total, count = nll(logits_fn, ids, window)
    return math.exp(total / count)
