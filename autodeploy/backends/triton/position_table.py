"""autodeploy::triton_position_table: autodeploy::position_table (backends/torch/position_table.py) in one launch.

    table [n, L, *row], position_ids [*P] int -> out [n, *P, *row]; position ids clamped into [0, L - 1]

torch spells the clamped gather as clamp + index_select (two kernels); at the head of a decode step this
is the whole of what RoPE's cos / sin cost once transforms/fold_position_tables.py has folded them. Grid:
one program per BLOCK_T positions; each loads its ids once, clamps them, and copies their rows of every
one of the n tables (n is static: a loop the compiler unrolls).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import pdl_enabled, pdl_launch, pdl_wait_and_release, unsupported_device_or_dtype

BLOCK_T = 16
MAX_ROW = 4096  # elements of one position's row a program holds at once (RoPE: d_rot <= 512)


@triton.jit
def _position_table_kernel(table_ptr, pos_ptr, out_ptr, T, L, N: tl.constexpr, R: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, PDL: tl.constexpr = False):
    pdl_wait_and_release(PDL)  # position ids: the step's metadata (the table is a constant)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    r = tl.arange(0, BLOCK_R)
    ok = (t < T)[:, None] & (r < R)[None, :]
    pos = tl.load(pos_ptr + t, mask=t < T, other=0).to(tl.int64)
    pos = tl.minimum(tl.maximum(pos, 0), L - 1)
    for j in tl.static_range(N):
        rows = tl.load(table_ptr + (j * L + pos)[:, None] * R + r[None, :], mask=ok)
        tl.store(out_ptr + (j * T + t.to(tl.int64))[:, None] * R + r[None, :], rows, mask=ok)


def unsupported_reason(table: Tensor, position_ids: Tensor) -> str | None:
    why = unsupported_device_or_dtype(table, position_ids)
    if why:
        return why
    if position_ids.device != table.device:
        return "table and position ids on different devices"
    if position_ids.dtype not in (torch.int32, torch.int64):
        return f"position ids of dtype {position_ids.dtype}"
    if table.dim() < 2 or table.shape[1] < 1:
        return f"table of shape {list(table.shape)}: needs [n, L >= 1, *row]"
    if math.prod(table.shape[2:]) > MAX_ROW:
        return f"a position's row has {math.prod(table.shape[2:])} elements (> {MAX_ROW})"
    return None


def supports(table: Tensor, position_ids: Tensor) -> bool:
    return unsupported_reason(table, position_ids) is None


def lookup(table: Tensor, position_ids: Tensor) -> Tensor:
    """The op's result in one launch (the caller checked supports(), or the interpreter runs on CPU)."""
    n, length, row = table.shape[0], table.shape[1], tuple(table.shape[2:])
    r = math.prod(row)
    out = torch.empty((n, *position_ids.shape, *row), dtype=table.dtype, device=table.device)
    t = position_ids.numel()
    if t and n:
        pos = position_ids.reshape(-1).contiguous()
        _position_table_kernel[(triton.cdiv(t, BLOCK_T),)](
            table.contiguous(), pos, out, t, length, N=n, R=r, BLOCK_T=BLOCK_T,
            BLOCK_R=triton.next_power_of_2(max(r, 1)), PDL=pdl_enabled(table.device), num_warps=4,
            **pdl_launch(table.device),
        )
    return out


@torch.library.custom_op("autodeploy::triton_position_table", mutates_args=())
def triton_position_table(table: Tensor, position_ids: Tensor) -> Tensor:
    """table [n, L, *row], position_ids [*P] -> [n, *P, *row]; the reference where the kernel cannot run."""
    if unsupported_reason(table, position_ids) is not None:
        return torch.ops.autodeploy.position_table(table, position_ids)
    return lookup(table, position_ids)


@triton_position_table.register_fake
def _(table, position_ids):
    return table.new_empty((table.shape[0], *position_ids.shape, *table.shape[2:]))
