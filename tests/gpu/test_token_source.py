"""The decode graph's placeholder substitution on CUDA takes the one-launch Triton kernel
(backends/triton/token_source.py) and gives apply_token_source's tokens, captured in a CUDA graph too."""

from __future__ import annotations

import pytest
import torch

from autodeploy.runtime import cached_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_substitution_takes_the_kernel_and_replays(monkeypatch):
    kernel = cached_model._token_source_kernel()
    launched = []
    real = kernel.substitute_
    monkeypatch.setattr(kernel, "substitute_", lambda ids, prev, src: launched.append(ids.numel()) or real(ids, prev, src))
    ids = torch.tensor([3, 4, 5, 6, 7], device="cuda")
    prev = torch.tensor([100, 101, 102], device="cuda")
    source = torch.tensor([2, -1, 0, -1, 2], device="cuda")
    want = cached_model.apply_token_source(ids.clone(), prev, source)
    assert torch.equal(cached_model.substitute_tokens_(ids, prev, source), want) and launched == [5]

    ids.copy_(torch.tensor([3, 4, 5, 6, 7]))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cached_model.substitute_tokens_(ids, prev, source)
    prev.copy_(torch.tensor([7, 8, 9]))  # the next step's sampled tokens, written into the same buffer
    graph.replay()
    assert ids.tolist() == [9, 4, 7, 6, 9]
