"""FP8 decode linear: `autodeploy::triton_fp8_linear`, the GPU twin of autodeploy::fp8_linear for few rows.

    x [.., K] (bf16 / fp16 / fp32),  weight e4m3 [N, K],  weight_scale fp32 [N] | [N, 1] | [] | [1],  bias?
        rows <= 16: the GEMV kernel below;  more rows, or block-wise scales: the reference (torch._scaled_mm)

At batch-1 decode a linear is bound by its weight bytes, and e4m3 halves them against bf16 (an 8B
model's layers: 7 GB instead of 14 per token). The reference path pays two extra kernels per call
(per-token quantization of x, then cuBLASLt's FP8 GEMM, whose tiles are made for many rows); here
one kernel streams the weight once, in the layout of backends/triton/linear.py's "dot_t" GEMV
(weights on the MMA's M side, x padded to 16 rows on its N side):

    program (n-tile, k-split):
        s_x[m]   = max(amax_k |x[m, k]|, 448e-12) / 448          per token, as fp8.quantize_rows
        acc      = sum over its K range of  tl.dot(w [BN, BK] e4m3, round_e4m3(x / s_x)^T [BK, BM])
        out      = acc * s_w[n] * s_x[m] (+ bias)                 fp32 epilogue, written in x's dtype

The products of two e4m3 values are exact, so the result equals the reference's up to fp32
summation order (cuBLASLt's fast accumulation included). `x_prologue` picks where x is quantized:
  in the kernel (False): before its main loop each program reads its x rows once more for their
      amax, one wide load per row (8B: 8-28 KB, from L2), instead of a second launch.
  a prologue kernel (True, the default): one program per row writes e4m3 x and s_x; the GEMV then
      reads e4m3 x once. Measured on the H100 at M = 1 (quant_gemv_bench.txt, 2026-11-28) the
      prologue wins on all four 8B weights: qkv 14.4 vs 20.0 us, o 12.9 vs 14.0, gate_up 44.3 vs
      45.0, down 30.6 vs 56.7 (its 256 programs each re-reading the 28 KB row cost more than the
      extra launch); at M = 16 each program would reread 0.46 MB. AUTODEPLOY_FP8_X_PROLOGUE=0 quantizes
      in the kernel wherever a config says prologue (for in-graph A/B runs: the tuner times ops alone).
`launch_quantized` runs the GEMV alone on rows quantized elsewhere (e4m3 x and s_x as the prologue
kernel writes them): add_rmsnorm_fp8_linear.py's norm kernel writes them instead of the normed row.
`launch_block_scaled` (X_MODE 3) quantizes x in the GEMV like X_MODE 1, but takes each row's amax from
NB per-block amaxes that x's producer wrote beside it (gated_act_fp8_linear.py's activation kernel, one
per program of its grid): each program reads NB floats a row instead of the whole row, and divides by
the scale as the prologue kernel does, so its codes are the prologue's bit for bit.
`fp8_dot` False multiplies in fp16 instead (e4m3 -> fp16 is exact): the same numbers, a fallback
should a Triton build reject an fp8 tl.dot in this orientation. quantize_input False (FP8 weights,
x as is) multiplies w (converted to x's dtype, exact) with x in x's dtype.

Unsupported rows <= 16 (device, dtype, K % 64) raise NotImplementedError from `launch`; the op
itself sends them, and every call above 16 rows, to the reference.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

import autodeploy.backends.torch.quant_linear  # noqa: F401  (autodeploy::fp8_linear, the fallback)
from autodeploy.backends.triton._common import (DTYPES, interpreted, num_sms, pdl_enabled, pdl_launch,
                                                pdl_prefetch_meta, pdl_wait_and_release, prefetch_rows, rows_of,
                                                tickets, unsupported_device_or_dtype)
from autodeploy.backends.triton.linear import split_k, store_or_merge
from autodeploy.quantization import fp8 as fp8_q

log = logging.getLogger(__name__)

MAX_ROWS = 16  # decode batches: x is padded to the MMA's 16 rows
K_MULTIPLE = 64  # every BK tile lies inside K: no K masks in the loop
FP8_MAX = tl.constexpr(448.0)  # constexpr: compiled kernels may read no other globals (the interpreter can)
MIN_SCALE = tl.constexpr(1e-12)  # fp8.MIN_SCALE


@triton.jit
def _round_e4m3(v, EXACT: tl.constexpr):
    """fp32 v (already clamped to +-448) -> e4m3, rounded to nearest even.

    EXACT: round in fp32 first (3 mantissa bits; subnormals to multiples of 2^-9), so the cast only
    drops zero bits: Triton's interpreter truncates where rounding carries into the exponent
    (1.95 -> 1.0). The GPU's cvt.rn.satfinite is exact and takes the plain cast."""
    if EXACT:
        b = v.to(tl.int32, bitcast=True)
        b = (b + 0x7FFFF + ((b >> 20) & 1)) & -1048576  # keep 3 of 23 mantissa bits, ties to even
        normal = b.to(tl.float32, bitcast=True)
        sub = (v + 24576.0) - 24576.0  # 1.5 * 2^14: fp32's ulp there is 2^-9, e4m3's subnormal step
        v = tl.where(tl.abs(v) < 0.015625, sub, normal)
    return v.to(tl.float8e4nv, fp_downcast_rounding="rtne")


@triton.jit
def quantize_e4m3(v, scale, EXACT: tl.constexpr):
    """fp32 v -> e4m3 codes of v / scale, clamped to +-448: the one spelling of the per-token rounding
    (the prologue kernel here, add_rmsnorm_fp8_linear.py's norm kernel), so their codes agree bit for bit."""
    return _round_e4m3(tl.minimum(tl.maximum(v / scale, -FP8_MAX), FP8_MAX), EXACT)


@triton.jit
def _row_amax(row_ptr, K, BLOCK: tl.constexpr):
    """max |row[k]| over k < K in fp32; one load when K <= BLOCK (each further step waits one L2 trip)."""
    rk = tl.arange(0, BLOCK)
    amax = tl.max(tl.abs(tl.load(row_ptr + rk, mask=rk < K, other=0.0).to(tl.float32)), axis=0)
    for k0 in range(BLOCK, K, BLOCK):
        v = tl.load(row_ptr + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=0))
    return amax


@triton.jit
def _quantize_rows_kernel(x_ptr, xq_ptr, xs_ptr, K, stride_xm, BLOCK: tl.constexpr, EXACT: tl.constexpr,
                          PDL: tl.constexpr = False):
    """One program per row: xs[m] = amax|x[m]| / 448 (>= 1e-12), xq[m] = e4m3(x[m] / xs[m])."""
    pdl_wait_and_release(PDL)
    m = tl.program_id(0)
    rk = tl.arange(0, BLOCK)
    scale = tl.maximum(_row_amax(x_ptr + m * stride_xm, K, BLOCK) / FP8_MAX, MIN_SCALE)
    for k0 in range(0, K, BLOCK):  # the row's second read comes from L1 / L2
        mask = k0 + rk < K
        xk = tl.load(x_ptr + m * stride_xm + k0 + rk, mask=mask, other=0.0).to(tl.float32)
        tl.store(xq_ptr + m * K + k0 + rk, quantize_e4m3(xk, scale, EXACT), mask=mask)
    tl.store(xs_ptr + m, scale)


@triton.jit(do_not_specialize=["M"])  # M = 1 would otherwise compile its own copy of every config
def _fp8_gemv_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,  # PARTIAL only: part_ptr, ticket_ptr
    M, N, K, K_PER_SPLIT,
    stride_xm, stride_wn, stride_om, stride_split,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    AMAX_BLOCK: tl.constexpr,  # values a row's amax is read from at once: x's (X_MODE 1), block amaxes (3)
    X_MODE: tl.constexpr,  # 0: x as is (weight-only FP8); 1: quantize x here; 2: x is e4m3 with scales xs;
                           # 3: quantize x here, its row amax the max of the block amaxes xs [M, NB]
    FP8_DOT: tl.constexpr, PER_TENSOR: tl.constexpr, PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    EXACT: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr = False,
    PF_LINES: tl.constexpr = 0, PF_STEP: tl.constexpr = 128, NB: tl.constexpr = 0,  # X_MODE 3: amaxes a row
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mask_m = rm < M
    mask_n = rn < N
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    if PF_LINES > 0:  # weights only, before the wait (_common.py: weight prefetch)
        prefetch_rows(w_ptr + tl.minimum(rn, N - 1).to(tl.int64) * stride_wn + k_start, PF_LINES, PF_STEP)
    # the weight scales before the wait too (weights: no kernel of the step writes them): loaded after the
    # main loop they were one more DRAM round trip at the end of every program, after its last tile
    if PER_TENSOR:
        w_scale = tl.load(ws_ptr).to(tl.float32)
    else:
        w_scale = tl.load(ws_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
    pdl_wait_and_release(PDL)
    x_rows = x_ptr + rm[:, None] * stride_xm  # [BM, 1]

    if X_MODE == 1:  # per-token scales over whole rows (every program: x is a few KB, from L2)
        amax = tl.zeros((BM,), dtype=tl.float32)
        for m in range(0, M):  # one wide load per row: a loop of [BM, BK] tiles would wait K / BK L2 trips
            amax = tl.where(rm == m, _row_amax(x_ptr + m * stride_xm, K, AMAX_BLOCK), amax)
        x_scale = tl.maximum(amax / FP8_MAX, MIN_SCALE)  # [BM]
        x_inv = 1.0 / x_scale
    elif X_MODE == 2:
        x_scale = tl.load(xs_ptr + rm, mask=mask_m, other=1.0)  # [BM] from _quantize_rows_kernel
    elif X_MODE == 3:  # NB floats a row, written by the kernel that wrote x (gated_act_fp8_linear.py)
        rb = tl.arange(0, AMAX_BLOCK)
        amax_mask = mask_m[:, None] & (rb < NB)[None, :]
        block_amax = tl.load(xs_ptr + rm[:, None] * NB + rb[None, :], mask=amax_mask, other=0.0)  # [BM, AMAX_BLOCK]
        x_scale = tl.maximum(tl.max(block_amax, axis=1) / FP8_MAX, MIN_SCALE)  # [BM]: _quantize_rows_kernel's

    w_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (k_start + rk)[None, :]  # [BN, BK]
    x_ptrs = x_rows + (k_start + rk)[None, :]  # [BM, BK]
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for _ in range(k_start, k_end, BK):
        w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)  # [BN, BK] e4m3: the bytes that matter
        xk = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)  # [BM, BK]: a few KB, cached
        if X_MODE == 1:
            xf = xk.to(tl.float32) * x_inv[:, None]
            xk = _round_e4m3(tl.minimum(tl.maximum(xf, -FP8_MAX), FP8_MAX), EXACT)
        elif X_MODE == 3:  # a division, as _quantize_rows_kernel: its codes bit for bit (mode 1's product is not)
            xk = quantize_e4m3(xk.to(tl.float32), x_scale[:, None], EXACT)
        if X_MODE == 0:
            acc += tl.dot(w.to(xk.dtype), tl.trans(xk), input_precision=PRECISION)
        elif FP8_DOT:
            acc += tl.dot(w, tl.trans(xk))
        else:  # e4m3 -> fp16 is exact on both operands
            acc += tl.dot(w.to(tl.float16), tl.trans(xk.to(tl.float16)))
        w_ptrs += BK
        x_ptrs += BK

    if PER_TENSOR:
        acc *= w_scale
    else:
        acc *= w_scale[:, None]
    out = tl.trans(acc)  # [BM, BN]
    if X_MODE != 0:
        out *= x_scale[:, None]
    store_or_merge(out, out_ptr, part_ptr, ticket_ptr, bias_ptr, rm, rn, mask_m, mask_n, stride_om, stride_split,
                   pid_n, pid_k, PARTIAL, HAS_BIAS, out_ptr, ticket_ptr, False, 0, 1, 1, 16, 16)


def _per_tensor(weight_scale: Tensor, n: int) -> Optional[bool]:
    """True: one scale; False: one per output channel ([N] or fbgemm's [N, 1]); None: block-wise."""
    if weight_scale.numel() == 1:
        return True
    if weight_scale.shape in ((n,), (n, 1)):
        return False
    return None


def operand_problem(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None) -> Optional[str]:
    """Why the GEMV cannot read these operands at any row count; None if it can."""
    why = unsupported_device_or_dtype(x, weight_scale, bias)
    if why:
        return why
    if not x.is_floating_point():
        return f"dtype {x.dtype} is not one of {DTYPES}"
    if weight.dtype != fp8_q.DTYPE or weight.dim() != 2 or weight.stride(-1) != 1:
        return "weight must be an e4m3 [N, K] matrix with contiguous rows"
    if weight.device != x.device or weight_scale.device != x.device or (bias is not None and bias.device != x.device):
        return "x, weight, scales and bias must be on one device"
    n, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        return f"x has {x.shape[-1] if x.dim() else 0} input channels, the weight {k}"
    if k == 0 or k % K_MULTIPLE:
        return f"K = {k} is not a positive multiple of {K_MULTIPLE}"
    if _per_tensor(weight_scale, n) is None:
        return f"weight scale {list(weight_scale.shape)} is block-wise: the reference dequantizes it"
    if bias is not None and bias.shape != (n,):
        return f"bias must be [{n}], got {list(bias.shape)}"
    return None


def unsupported_reason(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None) -> Optional[str]:
    why = operand_problem(x, weight, weight_scale, bias)
    if why:
        return why
    k = weight.shape[1]
    if x.numel() // k > MAX_ROWS:
        return f"{x.numel() // k} rows: the GEMV kernel takes at most {MAX_ROWS} (decode); torch._scaled_mm takes more"
    return None


def supports(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None) -> bool:
    return unsupported_reason(x, weight, weight_scale, bias) is None


def normalized(config: dict, m: int, n: int, k: int) -> dict:
    """A config made valid for (m, n, k): BK dividing K, the split a whole number of BK steps."""
    bk, split, k_per_split = split_k(k, config["bk"], config.get("split", 1))
    return dict(config, bk=bk, split=split, k_per_split=k_per_split, fp8_dot=config.get("fp8_dot", True),
                x_prologue=config.get("x_prologue", True))


@functools.lru_cache(maxsize=1024)  # per call at decode: keep the host's share of a few-us GEMV small
def launch_config(m: int, n: int, k: int, sms: int) -> dict:
    """Tile sizes and the K split for one call; not to be mutated.

    From the H100 sweep of quant_gemv_bench.py at M = 1 (2026-11-28, 8B weights): 64-row tiles won
    on every weight; 512-byte K steps won where N gives fewer than ~2 tiles per SM (qkv 13.2 us vs
    20.0 at the old BN 32 / BK 256, o 11.6 vs 14.0, down 30.9 vs 56.7), 256 where N is wide
    (gate_up 44.3, lm_head 173.5: 3.0 TB/s):
      wide (N / 64 >= 2 SMs)      BN 64, BK 256, 4 stages    gate_up, lm_head
      otherwise                   BN 64, BK 512, 3 stages    qkv, o, down
    That sweep split K only through a second kernel summing the partials, and unsplit won. Now the
    splits of an n tile merge in the same launch (the last to arrive sums, tickets). The H200 sweep
    (fifth session, 132 SMs, M = 1) with that: weights with at most half as many 64-row tiles as SMs
    leave most SMs idle and gain from ~2 programs per SM, BK 256: down (64 tiles) 19.6 us at split 4
    vs 23.3 unsplit, o 8.1 vs 8.6; qkv (96 tiles) lost at every split (10.5 unsplit, 11.1-14.3 split).
    AUTODEPLOY_FP8_SPLITK=0: the tiles above, K split only for skinny weights (for A/B runs).
    """
    bn = 64
    tiles = triton.cdiv(n, bn)
    if tiles >= 2 * sms:
        bk, stages = 256, 4
    else:
        bk, stages = 512, 3
    split = 1
    if tiles <= sms // 2 and os.environ.get("AUTODEPLOY_FP8_SPLITK", "1") == "1":
        bk, stages = 256, 4
        split = max(1, min(2 * sms // tiles, k // (2 * bk)))
    elif tiles < sms // 4:  # skinny weights: spread K over the idle SMs, >= 4 BK steps each
        split = max(1, min(triton.cdiv(2 * sms, tiles), k // (4 * bk)))
    return normalized(dict(bn=bn, bk=bk, split=split, num_warps=4, num_stages=stages), m, n, k)


def _amax_block(k: int) -> int:
    """Elements of one row read at once for its amax: all of an 8B's K = 4096 (down's 14336: two
    loads); 8192 bf16 over 128 threads is 64 values each, held only before the main loop."""
    return min(triton.next_power_of_2(k), 8192)


_FP8_DOT_BROKEN: list[str] = []  # set once an fp8 tl.dot failed to compile here: fp16 products from then on


def launch(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True,
           config: Optional[dict] = None) -> Tensor:
    """fp8_linear on the kernel (rows <= 16); raises NotImplementedError when it cannot take the call."""
    why = unsupported_reason(x, weight, weight_scale, bias)
    if why:
        raise NotImplementedError(f"triton fp8_linear: {why}")
    n, k = weight.shape
    x2 = rows_of(x)  # [M, K]
    m = x2.shape[0]
    if m == 0:
        return torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    cfg = normalized(config, m, n, k) if config else launch_config(m, n, k, num_sms(x.device))
    if not quantize_input:
        if x2.element_size() == 4 and not config:  # fp32 tl.dot: the weight tile is staged as fp32 (4x its
            cfg = normalized(dict(cfg, bk=min(cfg["bk"], 128)), m, n, k)  # bytes); BK 512 needed 256 KB of smem
        out = _gemv(x2, x2, 0, weight, weight_scale, bias, x.dtype, cfg, config is not None)
    elif cfg["x_prologue"] and os.environ.get("AUTODEPLOY_FP8_X_PROLOGUE", "1") == "1":  # =0: in the GEMV (A/B)
        xq, xs = quantize_rows(x2)  # [M, K] e4m3, [M] fp32
        out = _gemv(xq, xs, 2, weight, weight_scale, bias, x.dtype, cfg, config is not None)
    else:
        out = _gemv(x2, x2, 1, weight, weight_scale, bias, x.dtype, cfg, config is not None)
    return out.reshape(*x.shape[:-1], n)


def quantize_rows(x2: Tensor) -> tuple[Tensor, Tensor]:
    """x2 [M, K] -> (e4m3 [M, K], fp32 scales [M]) on the prologue kernel: fp8.quantize_rows' codes."""
    m, k = x2.shape
    xq = torch.empty(m, k, dtype=fp8_q.DTYPE, device=x2.device)  # [M, K]
    xs = torch.empty(m, dtype=torch.float32, device=x2.device)  # [M]
    _quantize_rows_kernel[(m,)](x2, xq, xs, k, x2.stride(0), BLOCK=_amax_block(k), EXACT=interpreted(), num_warps=8,
                                PDL=pdl_enabled(x2.device), **pdl_launch(x2.device))
    return xq, xs


def launch_quantized(xq: Tensor, xs: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                     out_dtype: torch.dtype, config: Optional[dict] = None) -> Tensor:
    """The GEMV alone, on rows already quantized: xq e4m3 [M, K] (contiguous), xs fp32 [M] -> [M, N] in
    out_dtype. For kernels that write quantize_rows' outputs themselves (add_rmsnorm_fp8_linear.py); the
    caller has checked the operands with unsupported_reason on the x they came from."""
    return _gemv_rows(xq, xs, 2, weight, weight_scale, bias, out_dtype, config)


def launch_block_scaled(x: Tensor, block_amax: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                        out_dtype: torch.dtype, config: Optional[dict] = None) -> Tensor:
    """The GEMV alone, quantizing x as it reads it: x [M, K] (bf16 / fp16 / fp32, unit stride on K),
    block_amax fp32 [M, NB] (contiguous) whose row max is max |x[m]| -> [M, N] in out_dtype. Each program
    takes its rows' scales from the NB amaxes instead of reading the rows whole (X_MODE 1's cost): for
    kernels that write x and its amax in blocks (gated_act_fp8_linear.py). The codes are quantize_rows'
    bit for bit, so the output is launch_quantized's on them. The caller has checked the operands with
    unsupported_reason on x."""
    return _gemv_rows(x, block_amax, 3, weight, weight_scale, bias, out_dtype, config)


def _gemv_rows(x2: Tensor, xs: Tensor, x_mode: int, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
               out_dtype: torch.dtype, config: Optional[dict]) -> Tensor:
    """_gemv on rows a producer kernel prepared (modes 2 and 3), with the default or the given config."""
    m, k = x2.shape
    n = weight.shape[0]
    if m == 0:
        return torch.empty(0, n, dtype=out_dtype, device=x2.device)
    cfg = normalized(config, m, n, k) if config else launch_config(m, n, k, num_sms(x2.device))
    return _gemv(x2, xs, x_mode, weight, weight_scale, bias, out_dtype, cfg, config is not None)


def _gemv(x2: Tensor, xs: Tensor, x_mode: int, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
          out_dtype: torch.dtype, cfg: dict, explicit: bool) -> Tensor:
    """One GEMV launch (split K merged inside it): x2 [M, K] as X_MODE reads it (0: as is, 1: quantized in the
    kernel, 2: e4m3 with scales xs [M], 3: quantized in the kernel with the row amaxes of the block amaxes
    xs [M, NB]) -> [M, N] in out_dtype. `explicit`: the config was asked for, so a failing fp8 tl.dot
    raises instead of falling back to fp16 products."""
    m, k = x2.shape
    n = weight.shape[0]
    device = x2.device
    out = torch.empty(m, n, dtype=out_dtype, device=device)  # [M, N]
    weight_scale = weight_scale if weight_scale.is_contiguous() else weight_scale.contiguous()  # [N] / [N, 1] / []
    split = cfg["split"]
    tiles = triton.cdiv(n, cfg["bn"])
    if split > 1:  # merged in the launch by each n tile's last split (tickets): no second kernel
        part = torch.empty(split, m, n, dtype=torch.float32, device=device)  # [S, M, N]
        counters = tickets(device, tiles)
    else:
        part = counters = out  # unused
    fp8_dot = cfg["fp8_dot"] and not (_FP8_DOT_BROKEN and not explicit)
    args = (x2, xs, weight, weight_scale, bias if bias is not None else weight_scale, out, part, counters,
            m, n, k, cfg["k_per_split"], x2.stride(0), weight.stride(0), n, m * n)
    nb = xs.shape[1] if x_mode == 3 else 0
    amax_block = triton.next_power_of_2(nb) if x_mode == 3 else _amax_block(k)
    meta = dict(BM=16, BN=cfg["bn"], BK=cfg["bk"], AMAX_BLOCK=amax_block, NB=nb, X_MODE=x_mode,
                PER_TENSOR=_per_tensor(weight_scale, n), PARTIAL=split > 1, HAS_BIAS=bias is not None,
                EXACT=interpreted(), PRECISION="ieee" if out_dtype == torch.float32 else "tf32",
                PDL=pdl_enabled(device), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_launch(device),
                **pdl_prefetch_meta(device, cfg["bk"], weight.element_size()))
    grid = (tiles, split)
    try:
        _fp8_gemv_kernel[grid](*args, FP8_DOT=fp8_dot, **meta)
    except Exception as e:  # noqa: BLE001  (compile errors surface at the first launch)
        if not fp8_dot or x_mode == 0 or explicit:
            raise
        log.warning("triton fp8_linear: fp8 tl.dot failed (%s: %s); multiplying in fp16 instead",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        _FP8_DOT_BROKEN.append(str(e)[:200])
        _fp8_gemv_kernel[grid](*args, FP8_DOT=False, **meta)
    return out


@torch.library.custom_op("autodeploy::triton_fp8_linear", mutates_args=())
def triton_fp8_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True
) -> Tensor:
    """autodeploy::fp8_linear with the GEMV kernel up to 16 rows; the reference (torch._scaled_mm) otherwise."""
    if not supports(x, weight, weight_scale, bias):
        return torch.ops.autodeploy.fp8_linear(x, weight, weight_scale, bias, quantize_input)
    return launch(x, weight, weight_scale, bias, quantize_input)


@triton_fp8_linear.register_fake
def _(x, weight, weight_scale, bias=None, quantize_input=True):
    return x.new_empty(*x.shape[:-1], weight.shape[0])
