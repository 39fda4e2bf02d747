"""autodeploy::position_table — rows of a table precomputed per position, looked up by position id.

    table [n, L, *row] (row: the per-position shape, e.g. [d_rot]),  position_ids [*P] int
        -> out [n, *P, *row]:  out[j, p] = table[j, min(max(position_ids[p], 0), L - 1)]

transforms/fold_position_tables.py puts it where the graph computed values from position_ids alone (RoPE's
cos / sin: ~10 small kernels a step at the head of every decode graph); out[j] is the j-th of those values,
contiguous. Positions are clamped into the table: the engine never schedules one at or past max_seq_len
(L), and a position there must not become an out-of-bounds read on the device.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("autodeploy::position_table", mutates_args=())
def position_table(table: Tensor, position_ids: Tensor) -> Tensor:
    """table [n, L, *row], position_ids [*P] -> [n, *P, *row]."""
    n, length, row = table.shape[0], table.shape[1], table.shape[2:]
    idx = position_ids.reshape(-1).clamp(0, length - 1)
    return table.index_select(1, idx).reshape(n, *position_ids.shape, *row)


@position_table.register_fake
def _(table, position_ids):
    return table.new_empty((table.shape[0], *position_ids.shape, *table.shape[2:]))
