"""The sampler's argmax on CUDA goes through the one-launch Triton kernel (backends/triton/argmax.py) and picks
torch.argmax's tokens at an 8B vocab, greedy and in the sampled rows' race."""

from __future__ import annotations

import pytest
import torch

from autodeploy.runtime import sampler

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_sampler_takes_the_kernel_on_cuda(monkeypatch):
    s = torch.randn(3, 128256, device="cuda")
    s[1, 77] = float("nan")
    launched = []
    kernel = sampler._argmax_kernel()
    real = kernel.launch
    monkeypatch.setattr(kernel, "launch", lambda scores: launched.append(scores.shape) or real(scores))
    assert torch.equal(sampler.argmax_rows(s), s.argmax(-1))
    assert launched == [(3, 128256)]
