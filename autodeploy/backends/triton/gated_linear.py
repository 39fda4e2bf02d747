"""Decode-shaped gated projection: `autodeploy::triton_gated_linear` (schema of autodeploy::gated_linear).

    triton_gated_linear(x [.., K], weight [2I, K], bias [2I]?, act) -> act(x Wg^T + bg) * (x Wu^T + bu) [.., I]
        rows = x.numel() / K <= 16: one GEMV launch (below)
        more rows (prefill):        aten.linear (cuBLAS) + the Triton activation on its [.., 2I] output

At decode the unfused MLP runs the gate_up GEMV (writes [M, 2I]), then an activation kernel that reads
it back and writes [M, I]: two launches, and the second is a ~2-3 us kernel of its own (of ~110 in a
1B decode step). Here each program owns output columns n..n+BN and streams the matching gate rows
n.. and up rows I+n.. of the weight through the same K loop as linear.py's GEMV (its helpers, its
kinds, its configs), then applies the activation to the two fp32 accumulators and stores act(g) * u
in x's dtype: one launch, and the [M, 2I] intermediate never exists.

    program (n-tile, k-split):  g, u [BM, BN] = x[:, k-range] @ weight[{n, I+n}-tile, k-range]^T
        split 1:  out[:, n-tile] = act(g + bg) * (u + bu)
        split S:  fp32 partials [S, M, 2I], then _sum_gated_splits_kernel sums, adds the bias, activates

The launch config is linear.py's for an [2I, K] weight with BN halved: a program reads the same
bytes per K step (BN/2 gate + BN/2 up rows) and the grid has the same number of programs.
Rows <= 16 that the kernel cannot take (device, dtype, K % 64) raise NotImplementedError.
NORM=True: linear.py's add + RMSNorm prologue (the op is autodeploy::triton_add_rmsnorm_gated_linear,
in add_rmsnorm_linear.py).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton import gated_mlp, linear
from autodeploy.backends.triton._common import (dot_precision, num_sms, on_cuda, pdl_enabled, pdl_launch,
                                                pdl_prefetch_meta, pdl_wait_and_release, prefetch_rows)
from autodeploy.backends.triton.gated_mlp import ACTIVATIONS, activate
from autodeploy.backends.triton.linear import (KINDS, MAX_ROWS, gemv_acc_init, gemv_acc_rows, gemv_rows, gemv_step,
                                               norm_problem, norm_prologue, normed_tile, shaped)
from autodeploy.profiler.candidates import register_backend


@triton.jit(do_not_specialize=["M"])
def _gated_linear_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr,
    res_ptr, norm_w_ptr, res_out_ptr, eps,  # NORM only: residual [M, K], norm weight [K], new residual [M, K]
    M, I, K, K_PER_SPLIT,
    stride_xm, stride_wn, stride_om, stride_split,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KIND: tl.constexpr, ACT: tl.constexpr,
    PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, PDL: tl.constexpr = False,
    PF_LINES: tl.constexpr = 0, PF_STEP: tl.constexpr = 64,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)  # output columns = gate rows; up rows are I + rn
    rk = tl.arange(0, BK)
    mask_m = rm < M
    mask_n = rn < I
    k_start = pid_k * K_PER_SPLIT
    if PF_LINES > 0:  # weights only, before the wait (_common.py: weight prefetch)
        last = tl.minimum(rn, I - 1).to(tl.int64) * stride_wn + k_start
        prefetch_rows(w_ptr + last, PF_LINES, PF_STEP)
        prefetch_rows(w_ptr + last + I * stride_wn, PF_LINES, PF_STEP)
    pdl_wait_and_release(PDL)
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    if NORM:  # every program takes the rows' statistics over all of K; program (0, 0) writes x + residual
        rstd = norm_prologue(x_ptr, res_ptr, res_out_ptr, rm, M, K, stride_xm, eps, pid_n + pid_k, BM, BK)
    wg_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (k_start + rk)[None, :]  # [BN, BK]
    wu_ptrs = w_ptr + (rn + I).to(tl.int64)[:, None] * stride_wn + (k_start + rk)[None, :]  # [BN, BK]
    x_offs = rm[:, None] * stride_xm + (k_start + rk)[None, :]  # [BM, BK]
    acc_g = gemv_acc_init(BM, BN, KIND)
    acc_u = gemv_acc_init(BM, BN, KIND)
    for k0 in range(k_start, k_end, BK):
        wg = tl.load(wg_ptrs, mask=mask_n[:, None], other=0.0)
        wu = tl.load(wu_ptrs, mask=mask_n[:, None], other=0.0)
        if NORM:  # the normalized x tile, rounded to the weight's dtype as the unfused norm's output is
            xk = normed_tile(x_ptr, res_ptr, norm_w_ptr, x_offs, k0, rk, mask_m, rstd, UNIT_OFFSET).to(wg.dtype)
        else:
            xk = tl.load(x_ptr + x_offs, mask=mask_m[:, None], other=0.0)  # read once for both tiles
        acc_g = gemv_step(acc_g, wg, xk, KIND, PRECISION)
        acc_u = gemv_step(acc_u, wu, xk, KIND, PRECISION)
        wg_ptrs += BK
        wu_ptrs += BK
        x_offs += BK
    g = gemv_acc_rows(acc_g, KIND)  # [BM, BN]
    u = gemv_acc_rows(acc_u, KIND)  # [BM, BN]
    mask_o = mask_m[:, None] & mask_n[None, :]
    if PARTIAL:  # fp32 partials [split, M, 2I] (gate columns, then up), finished by _sum_gated_splits_kernel
        part = out_ptr + pid_k * stride_split + rm[:, None] * stride_om + rn[None, :]
        tl.store(part, g, mask=mask_o)
        tl.store(part + I, u, mask=mask_o)
    else:
        if HAS_BIAS:
            g += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            u += tl.load(bias_ptr + I + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out = activate(g, ACT) * u
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out.to(out_ptr.dtype.element_ty), mask=mask_o)


@triton.jit
def _sum_gated_splits_kernel(part_ptr, bias_ptr, out_ptr, MI, I, SPLIT,
                             BLOCK: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index into out [M, I]
    mask = offs < MI
    col = offs % I
    g_offs = (offs // I) * 2 * I + col  # into one split's [M, 2I]
    g = tl.zeros((BLOCK,), dtype=tl.float32)
    u = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        g += tl.load(part_ptr + s * 2 * MI + g_offs, mask=mask, other=0.0)
        u += tl.load(part_ptr + s * 2 * MI + g_offs + I, mask=mask, other=0.0)
    if HAS_BIAS:
        g += tl.load(bias_ptr + col, mask=mask, other=0.0).to(tl.float32)
        u += tl.load(bias_ptr + I + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (activate(g, ACT) * u).to(out_ptr.dtype.element_ty), mask=mask)


def operand_problem(x: Tensor, weight: Tensor, bias: Optional[Tensor], act: str) -> Optional[str]:
    """Why the op cannot run these arguments at any row count; None if it can."""
    why = linear.operand_problem(x, weight, bias)
    if why:
        return why
    if act not in ACTIVATIONS:
        return f"activation {act!r} is not one of {sorted(ACTIVATIONS)}"
    if weight.shape[0] % 2:
        return f"gate_up weight has odd width {weight.shape[0]}"
    return None


def unsupported_reason(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> Optional[str]:
    """Why the GEMV kernel cannot take this call; None if it can."""
    why = operand_problem(x, weight, bias, act)
    if why:
        return why
    rows = x.numel() // weight.shape[-1]
    if rows > MAX_ROWS:
        return f"{rows} rows: the GEMV kernel takes at most {MAX_ROWS} (decode); cuBLAS takes more"
    return None


def supports(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> bool:
    """Can the op (kernel up to 16 rows, cuBLAS + Triton activation above) run these arguments?"""
    return operand_problem(x, weight, bias, act) is None


@functools.lru_cache(maxsize=1024)  # per call at decode, as linear.launch_config
def launch_config(m: int, i: int, k: int, sms: int, itemsize: int = 2) -> dict:
    """linear.streaming_tiles for the [2I, K] weight, BN halved (the same bytes per program and program
    count), unsplit. Untimed as such: benchmarks/gated_linear_bench.py sweeps it on an H100 against
    cuBLAS + act; on the H200 the 8B gate_up ran at 3.75 TB/s with it (32.3 us, cuBLAS + act 32.2)."""
    bn, bk, stages = linear.streaming_tiles(2 * i, k, sms, itemsize)
    return linear.normalized(dict(kind="dot_t", bn=max(16, bn // 2), bk=bk, split=1, num_warps=4, num_stages=stages),
                             m, i, k)


def launch(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu",
           config: Optional[dict] = None, norm: Optional[tuple] = None):
    """act(x Wg^T + bg) * (x Wu^T + bu) [.., I] on the GEMV kernel; raises NotImplementedError when it cannot.

    norm = (residual [.., K], norm_weight [K], eps, add_unit_offset): x is first replaced by
    rmsnorm(x + residual) (the prologue); returns (out [.., I], x + residual [.., K]) then."""
    why = unsupported_reason(x, weight, bias, act) or (norm_problem(x, norm) if norm is not None else None)
    if why:
        raise NotImplementedError(f"triton gated_linear: {why}")
    n, k = weight.shape
    i = n // 2
    x2, norm_args = gemv_rows(x, norm)  # [M, K], (residual, norm weight, new residual, eps)
    m = x2.shape[0]
    out = torch.empty(m, i, dtype=x.dtype, device=x.device)  # [M, I]
    if m == 0 or i == 0:
        if norm is not None:
            norm_args[2].copy_(x2 + norm_args[0])
        return shaped(out, norm_args, x, norm)
    cfg = linear.normalized(config, m, i, k) if config else launch_config(m, i, k, num_sms(x.device), x.element_size())
    split = cfg["split"]
    has_bias = bias is not None
    if split == 1:
        dest, stride_om = out, i
    else:
        dest, stride_om = torch.empty(split, m, n, dtype=torch.float32, device=x.device), n  # [S, M, 2I]
    _gated_linear_kernel[(triton.cdiv(i, cfg["bn"]), split)](
        x2, weight, bias if has_bias else weight, dest, *norm_args,
        m, i, k, cfg["k_per_split"],
        x2.stride(0), weight.stride(0), stride_om, m * n,
        BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], KIND=KINDS[cfg["kind"]], ACT=ACTIVATIONS[act],
        PARTIAL=split > 1, HAS_BIAS=has_bias, PRECISION=dot_precision(x.dtype),
        NORM=norm is not None, UNIT_OFFSET=bool(norm[3]) if norm is not None else False,
        PDL=pdl_enabled(x.device), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_launch(x.device),
        **pdl_prefetch_meta(x.device, cfg["bk"], weight.element_size()),
    )
    if split > 1:
        block = 1024
        _sum_gated_splits_kernel[(triton.cdiv(m * i, block),)](
            dest, bias if has_bias else dest, out, m * i, i, split,
            BLOCK=block, ACT=ACTIVATIONS[act], HAS_BIAS=has_bias, num_warps=4,
        )
    return shaped(out, norm_args, x, norm)


@torch.library.custom_op("autodeploy::triton_gated_linear", mutates_args=())
def triton_gated_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> Tensor:
    """x [.., K], weight [2I, K] -> act(gate) * up [.., I]: the GEMV kernel up to 16 rows, cuBLAS + act above."""
    if x.numel() // max(1, weight.shape[-1]) > MAX_ROWS:
        return gated_mlp.launch(F.linear(x, weight, bias), None, act)  # [.., 2I] -> [.., I]
    return launch(x, weight, bias, act)


@triton_gated_linear.register_fake
def _(x, weight, bias=None, act="silu"):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


@torch.library.custom_op("autodeploy::cublas_gated_linear", mutates_args=())
def cublas_gated_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> Tensor:
    """The unfused pair as one backend: cuBLAS for x @ weight^T [.., 2I], then the Triton act [.., I].

    A candidate beside the fused kernel: where cuBLAS streams a weight faster than the GEMV (the H100
    measured 1B gate_up at 25.8 us in cuBLAS, 29.4 us in the GEMV's bn=16 configs), this keeps the act
    in one Triton launch; the reference would run it as two aten elementwise kernels (2 x ~2.4 us)."""
    return gated_mlp.launch(F.linear(x, weight, bias), None, act)  # [.., 2I] -> [.., I]


@cublas_gated_linear.register_fake
def _(x, weight, bias=None, act="silu"):
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


register_backend("gated_linear", "cublas+triton_act", torch.ops.autodeploy.cublas_gated_linear.default,
                 supports=on_cuda)
