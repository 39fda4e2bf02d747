"""backends/triton/argmax.py (the sampler's greedy pick in one launch) against torch.argmax: random rows,
ties inside and across chunks (the first index wins), NaN (the first NaN wins), all -inf rows, a vocab
that is no multiple of the chunk, one chunk, and the ticket counters left at zero for the next launch.
Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.triton import argmax
from autodeploy.backends.triton._common import tickets
from tests.backends.triton.cases import DEVICE


def _check(scores: torch.Tensor) -> None:
    for _ in range(2):  # the second launch starts from the counters the first left
        got = argmax.launch(scores)
        assert got.dtype == torch.int64 and torch.equal(got, scores.argmax(-1))
    assert not tickets(scores.device, scores.shape[0])[: scores.shape[0]].any()


@pytest.mark.parametrize("v", [100, argmax.BLOCK, 3 * argmax.BLOCK + 77], ids=["one partial chunk", "one chunk",
                                                                                "4 chunks, the last partial"])
def test_random_rows(v):
    _check(torch.randn(3, v, device=DEVICE))


def test_ties_take_the_first_index():
    v = 3 * argmax.BLOCK + 5
    s = torch.randn(4, v, device=DEVICE)
    s[0, [7, 9]] = 50.0  # inside one chunk
    s[1, [argmax.BLOCK + 3, 2 * argmax.BLOCK + 1]] = 50.0  # across chunks
    s[2, [v - 1, 10]] = float("inf")
    s[3] = 1.0  # every entry
    _check(s)


def test_nan_and_all_minus_inf_rows():
    v = 2 * argmax.BLOCK + 9
    s = torch.randn(3, v, device=DEVICE)
    s[0, [argmax.BLOCK + 4, v - 2]] = float("nan")  # the first NaN, in the second chunk
    s[0, 3] = 1e30
    s[1] = float("-inf")
    s[2, argmax.BLOCK - 1] = float("nan")
    _check(s)


def test_supports():
    s = torch.randn(2, 64)
    assert not argmax.supports(s)  # CPU: the sampler keeps torch's argmax
    if DEVICE == "cuda":
        cuda = s.to("cuda")
        assert argmax.supports(cuda)
        assert not argmax.supports(cuda.half()) and not argmax.supports(cuda.t())
        assert not argmax.supports(torch.randn(1, argmax.BLOCK * argmax.MAX_CHUNKS + 1, device="cuda"))
