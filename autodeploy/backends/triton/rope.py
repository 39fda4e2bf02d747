"""Rotary embedding of q and k in one launch: `autodeploy::triton_rope` and in-place `autodeploy::triton_rope_`.

Same contract as the canonical `autodeploy::rope` (autodeploy/backends/torch/rope.py):

    q [b, s, n, d], k [b, s, n_kv, d], cos / sin [b or 1, s, d_rot], interleaved
      -> (q_out, k_out); only the first d_rot dims rotate, the rest pass through.

Pair i of the rotated dims is (x[i], x[i + d_rot/2]) for rotate_half and (x[2i], x[2i+1]) when
interleaved; either way the result is stored as [rotated firsts | rotated seconds], with angle i taken
from cos[..., i] (HF's tables are cat(freqs, freqs), so the first half holds every pair's angle).

cos / sin are cast to q's dtype first, as in the reference; the rotation itself runs in fp32 and
is rounded once, so a bf16 result may differ from eager's (which rounds each product too) by one ulp.

`triton_rope_` writes into q and k themselves (mutates them, returns nothing): each program loads a
whole token's heads before it stores, so the interleaved form's reordering is safe in place. That
saves the two output allocations and lets q / k stay views of a fused qkv projection.

One program per (token, block of up to 64 heads); q and k heads share the program, since a decode
step's rope is a few KB and launch-bound.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import unsupported_device_or_dtype


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
    s, n, n_kv,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h,  # input strides (last dim contiguous)
    sqo_b, sqo_s, sqo_h, sko_b, sko_s, sko_h,  # output strides
    sc_b, sc_s,  # cos / sin strides (0 on a broadcast batch)
    HALF: tl.constexpr, D_PASS: tl.constexpr, INTERLEAVED: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
):
    tok = tl.program_id(0)
    bi = (tok // s).to(tl.int64)
    si = (tok % s).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # q heads, then k heads
    is_q = heads < n
    head_ok = heads < n + n_kv
    kh = tl.where(is_q, 0, heads - n).to(tl.int64)
    qh = tl.where(is_q, heads, 0).to(tl.int64)
    x_row = tl.where(is_q, q_ptr + bi * sq_b + si * sq_s + qh * sq_h, k_ptr + bi * sk_b + si * sk_s + kh * sk_h)
    o_row = tl.where(is_q, qo_ptr + bi * sqo_b + si * sqo_s + qh * sqo_h, ko_ptr + bi * sko_b + si * sko_s + kh * sko_h)

    i = tl.arange(0, BLOCK_HALF)
    i_ok = i < HALF
    if INTERLEAVED:
        first, second = 2 * i, 2 * i + 1
    else:
        first, second = i, i + HALF
    mask = head_ok[:, None] & i_ok[None, :]
    x1 = tl.load(x_row[:, None] + first[None, :], mask=mask, other=0.0)
    x2 = tl.load(x_row[:, None] + second[None, :], mask=mask, other=0.0)
    if D_PASS > 0:  # load the pass-through dims before any store (in place: the rows may alias)
        j = tl.arange(0, BLOCK_PASS)
        pmask = head_ok[:, None] & (j < D_PASS)[None, :]
        xp = tl.load(x_row[:, None] + 2 * HALF + j[None, :], mask=pmask, other=0.0)
    dt = qo_ptr.dtype.element_ty
    c = tl.load(cos_ptr + bi * sc_b + si * sc_s + i, mask=i_ok, other=0.0).to(dt).to(tl.float32)[None, :]
    sn = tl.load(sin_ptr + bi * sc_b + si * sc_s + i, mask=i_ok, other=0.0).to(dt).to(tl.float32)[None, :]
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    out1 = (x1 * c - x2 * sn).to(dt)
    out2 = (x2 * c + x1 * sn).to(dt)
    tl.store(o_row[:, None] + i[None, :], out1, mask=mask)
    tl.store(o_row[:, None] + HALF + i[None, :], out2, mask=mask)
    if D_PASS > 0:
        tl.store(o_row[:, None] + 2 * HALF + j[None, :], xp, mask=pmask)


def unsupported_reason(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> Optional[str]:
    why = unsupported_device_or_dtype(q, k, cos, sin)
    if why:
        return why
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3:
        return "expects q, k [b, s, heads, d] and cos / sin [b, s, d_rot]"
    if q.dtype != k.dtype:
        return f"q ({q.dtype}) and k ({k.dtype}) differ in dtype"
    d_rot = cos.shape[-1]
    if d_rot % 2 or d_rot > q.shape[-1] or q.shape[-1] != k.shape[-1]:
        return f"rotary dim {d_rot} must be even and <= head dim {q.shape[-1]} (q and k alike)"
    if cos.shape != sin.shape or cos.shape[0] not in (1, q.shape[0]) or cos.shape[1] != q.shape[1]:
        return f"cos / sin {tuple(cos.shape)} do not broadcast to q {tuple(q.shape[:2])}"
    return None


def supports(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> bool:
    return unsupported_reason(q, k, cos, sin) is None


def launch(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool, q_out: Tensor, k_out: Tensor) -> None:
    """Writes rope(q) into q_out and rope(k) into k_out (which may be q and k themselves)."""
    why = unsupported_reason(q, k, cos, sin)
    if why:
        raise NotImplementedError(f"triton rope: {why}")
    for t in (q, k, q_out, k_out):
        if t.stride(-1) != 1:
            raise NotImplementedError("triton rope: the head dim must be contiguous")
    b, s, n, d = q.shape
    n_kv = k.shape[2]
    d_rot = cos.shape[-1]
    cos = cos.expand(b, s, d_rot)  # stride 0 over a broadcast batch
    sin = sin.expand(b, s, d_rot)
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    if b * s == 0:
        return
    block_h = min(64, triton.next_power_of_2(n + n_kv))
    grid = (b * s, triton.cdiv(n + n_kv, block_h))
    _rope_kernel[grid](
        q, k, q_out, k_out, cos, sin, s, n, n_kv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), cos.stride(1),
        HALF=d_rot // 2, D_PASS=d - d_rot, INTERLEAVED=bool(interleaved),
        BLOCK_H=block_h, BLOCK_HALF=triton.next_power_of_2(max(d_rot // 2, 1)),
        BLOCK_PASS=triton.next_power_of_2(max(d - d_rot, 1)), num_warps=4,
    )


@torch.library.custom_op("autodeploy::triton_rope", mutates_args=())
def triton_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    """q [b, s, n, d], k [b, s, n_kv, d], cos / sin [b, s, d_rot] -> (q_out, k_out), contiguous."""
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    launch(q, k, cos, sin, interleaved, q_out, k_out)
    return q_out, k_out


@triton_rope.register_fake
def _(q, k, cos, sin, interleaved=False):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)


@torch.library.custom_op("autodeploy::triton_rope_", mutates_args=("q", "k"))
def triton_rope_(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> None:
    """In place: q [b, s, n, d] and k [b, s, n_kv, d] become rope(q), rope(k)."""
    launch(q, k, cos, sin, interleaved, q, k)


@triton_rope_.register_fake
def _(q, k, cos, sin, interleaved=False):
    return None
