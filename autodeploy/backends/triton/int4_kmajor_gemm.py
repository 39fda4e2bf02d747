"""Int4 weight-only linear on the K-major layout: `autodeploy::triton_int4_wo_linear_kmajor`.

    x [.., K],  qweight_t [K/8, N] int32,  scales_t, zeros_t [K/g, N]  ->  [.., N]
    (the GPU twin of autodeploy::int4_wo_linear_kmajor; layout: autodeploy/quantization/int4_kmajor.py)

Up to 4 rows: the FMA GEMV of int4_kmajor_gemv.py (the decode path this layout exists for). More
rows: this tl.dot GEMM. The layout needs no nibble shuffles for tl.dot either: a step of BW words
(inside one group) is an [8 BW, BN] weight operand whose row j * BW + r is nibble plane j of word r,
i.e. input channel  group * g + j * GW + r0 + r  (GW = g / 8 words per group). x's matching
[BM, 8 BW] operand is 8 contiguous runs of BW columns, so the K order is permuted identically on
both sides and one tl.dot per step multiplies them:

    program (m tile, n tile):  acc[BM, BN] += x[:, cols(step)] @ ((q(step) - z[group]) * s[group])
    with cols(step) = group * g + (idx // BW) * GW + r0 + idx % BW  for idx < 8 BW

Dequantization matches the reference bit for bit ((q - z) * s in fp32, rounded to x's dtype) and
products accumulate in fp32, as in int4_gemm.py. An explicit config picks the kernel by its "kind"
("gemv": int4_kmajor_gemv.py, anything else this GEMM).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton import int4_kmajor_gemv
from autodeploy.backends.triton._common import (dot_precision, int4_operands_problem, num_sms, rows_of,
                                                unsupported_device_or_dtype)


@triton.jit
def _int4_kmajor_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K_WORDS,
    stride_xm, stride_qw, stride_sg, stride_zg, stride_om,
    GW: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mask_m = rm < M
    mask_n = rn < N
    rw = tl.arange(0, BW)
    idx = tl.arange(0, 8 * BW)  # the step's operand rows: plane idx // BW, word idx % BW
    x_cols = (idx // BW) * GW + idx % BW  # [8 BW] relative to the step's first channel
    shifts = 4 * tl.arange(0, 8)  # [8] nibble planes
    q_ptrs = qw_ptr + rw.to(tl.int64)[:, None] * stride_qw + rn[None, :]  # [BW, BN] int32
    x_ptrs = x_ptr + rm.to(tl.int64)[:, None] * stride_xm + x_cols[None, :]  # [BM, 8 BW]
    xdt = x_ptr.dtype.element_ty
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for w0 in range(0, K_WORDS, BW):
        g = w0 // GW
        first = g * (8 * GW) + (w0 - g * GW)  # input channel of plane 0, word 0 of the step
        word = tl.load(q_ptrs, mask=mask_n[None, :], other=0)  # [BW, BN]
        s = tl.load(s_ptr + g * stride_sg + rn, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
        z = tl.load(z_ptr + g * stride_zg + rn, mask=mask_n, other=0.0).to(tl.float32)
        codes = (word[None, :, :] >> shifts[:, None, None]) & 0xF  # [8, BW, BN]
        w = ((tl.reshape(codes, (8 * BW, BN)).to(tl.float32) - z[None, :]) * s[None, :]).to(xdt)  # [8 BW, BN]
        xk = tl.load(x_ptrs + first, mask=mask_m[:, None], other=0.0)  # [BM, 8 BW]
        acc = tl.dot(xk, w, acc, input_precision=PRECISION)
        q_ptrs += BW * stride_qw
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def unsupported_reason(x: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor, bias: Optional[Tensor],
                       group_size: int) -> Optional[str]:
    why = unsupported_device_or_dtype(x, scales_t, zeros_t, bias)
    if why:
        return why
    if qweight_t.device != x.device:
        return "qweight_t is on another device"
    if qweight_t.dtype != torch.int32 or qweight_t.dim() != 2:
        return "qweight_t must be a [K/8, N] int32 tensor"
    k_words, n = qweight_t.shape
    k = 8 * k_words
    return int4_operands_problem(x, k, n, group_size, scales_t, zeros_t, (k // max(1, group_size), n), bias)


def supports(x: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor, bias: Optional[Tensor] = None,
             group_size: int = 128) -> bool:
    return unsupported_reason(x, qweight_t, scales_t, zeros_t, bias, group_size) is None


def normalized(config: dict, group_size: int) -> dict:
    """A GEMM config made valid: BW a power of two dividing g / 8, >= 2 (tl.dot's K = 8 BW >= 16)."""
    return dict(config, kind="gemm", bw=max(2, min(config["bw"], group_size // 8)))


@functools.lru_cache(maxsize=1024)
def launch_config(m: int, n: int, group_size: int) -> dict:
    """Untimed first guess, as int4_gemm.launch_config's tiles (K per tl.dot: 8 BW = 128 / 64)."""
    if m <= 16:
        bm, bn, bw, warps, stages = 16, 64, 16, 4, 4
    elif m <= 64:
        bm, bn, bw, warps, stages = 32, 64, 16, 4, 4
    else:
        bm, bn, bw, warps, stages = 64, 128, 8, 8, 3
    return normalized(dict(bm=bm, bn=bn, bw=bw, num_warps=warps, num_stages=stages), group_size)


def kernel_for(m: int, config: Optional[dict]) -> str:
    """"gemv" or "gemm": the config's kind, else the GEMV up to its MAX_ROWS."""
    if config:
        return "gemv" if config.get("kind") == "gemv" else "gemm"
    return "gemv" if 0 < m <= int4_kmajor_gemv.MAX_ROWS else "gemm"


def launch(x: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor, bias: Optional[Tensor], group_size: int,
           config: Optional[dict] = None) -> Tensor:
    """x [.., K] -> [.., N]; config None: the GEMV's or the GEMM's untimed default."""
    why = unsupported_reason(x, qweight_t, scales_t, zeros_t, bias, group_size)
    if why:
        raise NotImplementedError(f"triton int4_wo_linear_kmajor: {why}")
    n = qweight_t.shape[1]
    x2 = rows_of(x)  # [M, K]
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*x.shape[:-1], n)
    qweight_t, scales_t, zeros_t = qweight_t.contiguous(), scales_t.contiguous(), zeros_t.contiguous()
    if kernel_for(m, config) == "gemv":
        out = int4_kmajor_gemv.launch(x2, qweight_t, scales_t, zeros_t, bias, group_size, config, num_sms(x.device))
        return out.reshape(*x.shape[:-1], n)
    cfg = normalized(config, group_size) if config else launch_config(m, n, group_size)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)  # [M, N]
    grid = (triton.cdiv(m, cfg["bm"]), triton.cdiv(n, cfg["bn"]))
    _int4_kmajor_gemm_kernel[grid](
        x2, qweight_t, scales_t, zeros_t, bias if bias is not None else scales_t, out,
        m, n, qweight_t.shape[0],
        x2.stride(0), qweight_t.stride(0), scales_t.stride(0), zeros_t.stride(0), out.stride(0),
        GW=group_size // 8, BM=cfg["bm"], BN=cfg["bn"], BW=cfg["bw"], HAS_BIAS=bias is not None,
        PRECISION=dot_precision(x.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("autodeploy::triton_int4_wo_linear_kmajor", mutates_args=())
def triton_int4_wo_linear_kmajor(x: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor,
                                 bias: Optional[Tensor] = None, group_size: int = 128) -> Tensor:
    """x [.., K] @ dequant(qweight_t [K/8, N])^T (+ bias) -> [.., N] (schema of autodeploy::int4_wo_linear_kmajor)."""
    return launch(x, qweight_t, scales_t, zeros_t, bias, group_size)


@triton_int4_wo_linear_kmajor.register_fake
def _(x, qweight_t, scales_t, zeros_t, bias=None, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight_t.shape[1])
