"""backends/triton/position_table.py (one launch) against autodeploy::position_table's reference: RoPE-shaped
tables, several tables at once, positions past either end (clamped), int32 ids, more positions than one
program, an empty step; and supports(). Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.triton import position_table
from tests.backends.triton.cases import DEVICE, DTYPES, dtypes


@dtypes
@pytest.mark.parametrize("n,length,row,pos_shape", [(2, 64, (16,), (1, 5)), (4, 33, (8,), (1, 40)),
                                                    (1, 16, (2, 4), (3,)), (2, 8, (16,), (1, 0))],
                         ids=["rope", "four tables, three programs", "2-d row, 1-d ids", "empty"])
def test_matches_the_reference(dtype, n, length, row, pos_shape):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(n, length, *row, generator=gen).to(DEVICE, dtype)
    ids = torch.randint(-3, length + 5, pos_shape, generator=gen).to(DEVICE)  # some past either end
    want = torch.ops.autodeploy.position_table(table, ids)
    got = position_table.lookup(table, ids)
    assert got.shape == (n, *pos_shape, *row) and torch.equal(got, want)


def test_int32_ids():
    table = torch.arange(2 * 10 * 4, dtype=DTYPES[0]).view(2, 10, 4).to(DEVICE)
    ids = torch.tensor([[9, 0, 4]], dtype=torch.int32, device=DEVICE)
    assert torch.equal(position_table.lookup(table, ids)[:, 0], table[:, [9, 0, 4]])


def test_supports():
    table, ids = torch.zeros(2, 8, 16, device=DEVICE), torch.zeros(1, 3, dtype=torch.int64, device=DEVICE)
    assert position_table.supports(table, ids)
    assert not position_table.supports(table, ids.float())  # float ids
    assert not position_table.supports(torch.zeros(2, 8, position_table.MAX_ROW + 1, device=DEVICE), ids)
    assert "row" in position_table.unsupported_reason(torch.zeros(2, 8, position_table.MAX_ROW + 1, device=DEVICE), ids)
