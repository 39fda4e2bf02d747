"""Int4 weight-only GEMM: `autodeploy::triton_int4_wo_linear`, the GPU twin of autodeploy::int4_wo_linear.

    x [.., K] (fp32 / bf16 / fp16),  qweight [N, K/2] uint8,  scales, zeros [N, K/g]  ->  [.., N]

The packed weight is read once and dequantized in registers: at batch-1 decode the GEMM is bound by
weight bytes, and int4 moves a quarter of bf16's (an 8B model's linears: ~4 GB instead of ~16 GB
per token). Packing is "half-split" (autodeploy/quantization/int4.py): byte j of a row holds column
j (low nibble) and column j + K/2 (high nibble), so one [BN, BK] tile of bytes gives two
contiguous [BN, BK] weight tiles, each multiplied with its own x tile: two tl.dot per step, no
nibble shuffles.

    program (m, n, k-split):  acc[BM, BN] = sum over its K/2 range of
        x[:, j]      @ ((lo(q[:, j]) - z) * s)^T   +   x[:, j + K/2] @ ((hi(q[:, j]) - z) * s)^T

Dequantization matches the reference bit for bit ((q - z) * s in fp32, cast to x's dtype) and
products accumulate in fp32. When a BK tile lies inside one group (GROUP % BK == 0 and K/2 % BK
== 0: every real model with g = 32..128), scales and zeros load as one [BN] vector per tile;
otherwise per column. A skinny weight (unfused k/v: N = 1024) splits K across programs at few
rows, its fp32 partials summed by one torch reduction (two small kernels a split call pays for).

Decode calls go to a GEMV whenever a power of two >= 16 divides both K/2 and the group size (every
real model): up to 4 rows the FMA GEMV of int4_gemv_fma.py (no tl.dot: nibbles dequantized in
registers with one LOP3 and one FMA each), up to 16 the tl.dot GEMV of int4_gemv.py (weights on the
MMA's M side, zero points and scales applied per tile after the product). An explicit config picks
the kernel by its "kind": "gemv_fma", "gemv", anything else this GEMM kernel. The op
autodeploy::triton_int4_wo_linear_dot takes the tl.dot GEMV for every decode call: the autotuner
times both (backends/triton/__init__.py registers it as the "triton-dot" backend).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton import int4_gemv, int4_gemv_fma
from autodeploy.backends.triton._common import (dot_precision, int4_operands_problem, num_sms, rows_of,
                                                unsupported_device_or_dtype)


@triton.jit
def _int4_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, HALF_K, K_PER_SPLIT,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_om, stride_split,
    GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    TILE_GROUP: tl.constexpr, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    mask_m = rm < M
    mask_n = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, HALF_K)
    for j0 in range(k_start, k_end, BK):
        rj = j0 + tl.arange(0, BK)
        mask_j = rj < k_end
        packed = tl.load(qw_ptr + rn[:, None] * stride_qn + rj[None, :],
                         mask=mask_n[:, None] & mask_j[None, :], other=0)  # [BN, BK] uint8
        lo = (packed & 0xF).to(tl.float32)
        hi = (packed >> 4).to(tl.float32)
        if TILE_GROUP:  # one group per tile and half: [BN] vectors
            g_lo = j0 // GROUP
            g_hi = (j0 + HALF_K) // GROUP
            s_lo = tl.load(s_ptr + rn * stride_sn + g_lo, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            z_lo = tl.load(z_ptr + rn * stride_zn + g_lo, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            s_hi = tl.load(s_ptr + rn * stride_sn + g_hi, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            z_hi = tl.load(z_ptr + rn * stride_zn + g_hi, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        else:  # groups change inside the tile: [BN, BK] gathers
            mask_w = mask_n[:, None] & mask_j[None, :]
            g_lo = (rj // GROUP)[None, :]
            g_hi = ((rj + HALF_K) // GROUP)[None, :]
            s_lo = tl.load(s_ptr + rn[:, None] * stride_sn + g_lo, mask=mask_w, other=0.0).to(tl.float32)
            z_lo = tl.load(z_ptr + rn[:, None] * stride_zn + g_lo, mask=mask_w, other=0.0).to(tl.float32)
            s_hi = tl.load(s_ptr + rn[:, None] * stride_sn + g_hi, mask=mask_w, other=0.0).to(tl.float32)
            z_hi = tl.load(z_ptr + rn[:, None] * stride_zn + g_hi, mask=mask_w, other=0.0).to(tl.float32)
        w_lo = ((lo - z_lo) * s_lo).to(x_ptr.dtype.element_ty)  # [BN, BK], rounded as the reference rounds
        w_hi = ((hi - z_hi) * s_hi).to(x_ptr.dtype.element_ty)
        mask_x = mask_m[:, None] & mask_j[None, :]
        x_lo = tl.load(x_ptr + rm[:, None] * stride_xm + rj[None, :], mask=mask_x, other=0.0)  # [BM, BK]
        x_hi = tl.load(x_ptr + rm[:, None] * stride_xm + (rj + HALF_K)[None, :], mask=mask_x, other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo), input_precision=PRECISION)
        acc += tl.dot(x_hi, tl.trans(w_hi), input_precision=PRECISION)
    mask_o = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask_o)
    else:  # fp32 partials [SPLIT_K, M, N]
        tl.store(out_ptr + pid_k * stride_split + rm[:, None] * stride_om + rn[None, :], acc, mask=mask_o)


def unsupported_reason(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor],
                       group_size: int) -> Optional[str]:
    why = unsupported_device_or_dtype(x, scales, zeros, bias)
    if why:
        return why
    if qweight.device != x.device:
        return "qweight is on another device"
    if qweight.dtype != torch.uint8 or qweight.dim() != 2:
        return "qweight must be a [N, K/2] uint8 tensor"
    n, half_k = qweight.shape
    k = 2 * half_k
    return int4_operands_problem(x, k, n, group_size, scales, zeros, (n, k // max(1, group_size)), bias)


def supports(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor] = None,
             group_size: int = 128) -> bool:
    return unsupported_reason(x, qweight, scales, zeros, bias, group_size) is None


def launch_config(m: int, n: int, half_k: int, group_size: int, sms: int) -> dict:
    """Tile sizes and the K split for one call (heuristic; no run-time autotuning inside CUDA graphs)."""
    if m <= 16:  # decode: weight-streaming, the M tile is padding; narrow N tiles give every SM a program
        bm, bn, bk, warps, stages = 16, 32, 128, 4, 4
    elif m <= 64:
        bm, bn, bk, warps, stages = 32, 64, 128, 4, 4
    else:  # prefill: compute-bound tiles
        bm, bn, bk, warps, stages = 64, 128, 64, 8, 3
    bk = max(16, min(bk, triton.next_power_of_2(half_k)))
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    split = 1
    if m <= 64 and 2 * tiles < sms:  # under half the SMs busy (k/v projections): split K, >= 2 BK steps each
        split = max(1, min(triton.cdiv(sms, tiles), triton.cdiv(half_k, 2 * bk), 16))
    k_per_split = triton.cdiv(triton.cdiv(half_k, split), bk) * bk
    split = triton.cdiv(half_k, k_per_split)
    tile_group = group_size % bk == 0 and half_k % bk == 0
    return dict(bm=bm, bn=bn, bk=bk, split=split, k_per_split=k_per_split, tile_group=tile_group,
                num_warps=warps, num_stages=stages)


def kernel_for(x2: Tensor, qweight: Tensor, group_size: int, config: Optional[dict], fma: bool = True) -> str:
    """"gemv_fma", "gemv" or "gemm": the config's kind, else the first kernel that takes these rows."""
    if config:
        return config.get("kind") if config.get("kind") in ("gemv_fma", "gemv") else "gemm"
    if fma and int4_gemv_fma.unsupported_reason(x2, qweight, group_size) is None:
        return "gemv_fma"
    return "gemv" if int4_gemv.unsupported_reason(x2, qweight, group_size) is None else "gemm"


def launch(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor], group_size: int,
           config: Optional[dict] = None, fma: bool = True) -> Tensor:
    """x [.., K] -> [.., N]; config None: launch_config's (or a GEMV's) untimed choice; fma=False keeps
    decode rows off the FMA GEMV."""
    why = unsupported_reason(x, qweight, scales, zeros, bias, group_size)
    if why:
        raise NotImplementedError(f"triton int4_wo_linear: {why}")
    n, half_k = qweight.shape
    x2 = rows_of(x)  # [M, K]
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    qweight, scales, zeros = qweight.contiguous(), scales.contiguous(), zeros.contiguous()
    kernel = kernel_for(x2, qweight, group_size, config, fma)
    if kernel == "gemv_fma":  # 1..4 decode rows: weights dequantized in registers, no tl.dot
        out = int4_gemv_fma.launch(x2, qweight, scales, zeros, bias, group_size, config, num_sms(x.device))
        return out.reshape(*x.shape[:-1], n)
    if kernel == "gemv":  # decode rows: the weight-streaming tl.dot kernel of int4_gemv.py
        return int4_gemv.launch(x2, qweight, scales, zeros, bias, group_size, config, num_sms(x.device)).reshape(
            *x.shape[:-1], n)
    cfg = config or launch_config(m, n, half_k, group_size, num_sms(x.device))
    split = cfg["split"]
    dest = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, cfg["bm"]), triton.cdiv(n, cfg["bn"]), split)
    _int4_gemm_kernel[grid](
        x2, qweight, scales, zeros, bias if bias is not None else scales, dest,
        m, n, half_k, cfg["k_per_split"],
        x2.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), n, m * n,
        GROUP=group_size, BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], TILE_GROUP=cfg["tile_group"],
        SPLIT_K=split, HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split > 1:
        summed = dest.sum(0)
        if bias is not None:
            summed += bias.float()
        out.copy_(summed)
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("autodeploy::triton_int4_wo_linear", mutates_args=())
def triton_int4_wo_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor] = None,
                          group_size: int = 128) -> Tensor:
    """x [.., K] @ dequant(qweight [N, K/2])^T (+ bias) -> [.., N] (schema of autodeploy::int4_wo_linear)."""
    return launch(x, qweight, scales, zeros, bias, group_size)


@triton_int4_wo_linear.register_fake
def _(x, qweight, scales, zeros, bias=None, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("autodeploy::triton_int4_wo_linear_dot", mutates_args=())
def triton_int4_wo_linear_dot(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor,
                              bias: Optional[Tensor] = None, group_size: int = 128) -> Tensor:
    """triton_int4_wo_linear with every decode call on the tl.dot GEMV (none on the FMA GEMV): the
    autotuner's second Triton candidate, for the row counts and cards where tensor cores win."""
    return launch(x, qweight, scales, zeros, bias, group_size, fma=False)


@triton_int4_wo_linear_dot.register_fake
def _(x, qweight, scales, zeros, bias=None, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])
