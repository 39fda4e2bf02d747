"""backends/triton/token_source.py (the decode graph's placeholder substitution in one launch) against
runtime/cached_model.apply_token_source (torch's five ops): random sources with and without placeholders,
every token a placeholder, more tokens than one program, an empty step, repeated sources; and supports().
Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.triton import token_source
from autodeploy.runtime.cached_model import apply_token_source
from tests.backends.triton.cases import DEVICE


def _check(t: int, n: int, placeholders: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (t,), generator=gen).to(DEVICE)
    prev = torch.randint(1000, 2000, (n,), generator=gen).to(DEVICE)
    source = torch.randint(0, max(n, 1), (t,), generator=gen)
    source = torch.where(torch.rand(t, generator=gen) < placeholders, source, torch.full_like(source, -1)).to(DEVICE)
    want = apply_token_source(ids.clone(), prev, source)
    got = ids.clone()
    assert token_source.substitute_(got, prev, source) is got  # in place
    assert torch.equal(got, want)


@pytest.mark.parametrize("t,n,placeholders", [(7, 4, 0.5), (5, 5, 1.0), (6, 3, 0.0),
                                              (token_source.BLOCK + 37, 64, 0.7), (0, 2, 0.5)],
                         ids=["mixed", "all", "none", "two programs", "empty"])
def test_matches_the_torch_ops(t, n, placeholders):
    _check(t, n, placeholders)


def test_several_tokens_from_one_row():
    ids = torch.tensor([5, 6, 7, 8], device=DEVICE)
    got = token_source.substitute_(ids, torch.tensor([40, 41], device=DEVICE), torch.tensor([1, -1, 1, 0], device=DEVICE))
    assert got.tolist() == [41, 6, 41, 40]


def test_supports_only_cuda_int64_vectors():
    if DEVICE != "cuda":
        assert not token_source.supports(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
                                         torch.zeros(3, dtype=torch.int64))
        return
    i64 = dict(dtype=torch.int64, device="cuda")
    ids, prev, src = torch.zeros(4, **i64), torch.zeros(3, **i64), torch.zeros(4, **i64)
    assert token_source.supports(ids, prev, src)
    assert not token_source.supports(ids.int(), prev, src)  # int32 ids
    assert not token_source.supports(ids, prev, src[:3])  # lengths differ
    assert not token_source.supports(torch.zeros(4, 2, **i64)[:, 0], prev, src)  # strided
    assert not token_source.supports(ids, prev.cpu(), src)  # two devices
