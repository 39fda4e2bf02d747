"""Int4 weight-only decode GEMV: the <= 16-row path of autodeploy::triton_int4_wo_linear (int4_gemm.py).

    x [M <= 16, K],  qweight [N, K/2] uint8 (half-split),  scales, zeros [N, K/g]  ->  [M, N]

At batch-1 decode the packed weight is a quarter of bf16's bytes (+ 1/32 for scales and zeros at
g = 128), so the kernel must stream it at HBM bandwidth with little arithmetic per byte: an H100
moving 3 TB/s over 132 SMs gets ~13 bytes per SM per cycle, 26 int4 weights, against 128 lanes of
ALU: about 5 lane-instructions per weight for everything. The layout is backends/triton/linear.py's
"dot_t" (weights on the MMA's M side, x padded to 16 rows on its N side), with two changes that
keep per-weight work to a mask or shift and a conversion:

  * the zero point and scale leave the inner product. With a BK tile inside one group
    (BK divides g and K/2), for each row n and x row m:
        sum_k x[m, k] (q[n, k] - z[n]) s[n]  =  s[n] (sum_k x[m, k] q[n, k]  -  z[n] sum_k x[m, k])
    so the MMA multiplies the raw 0..15 codes (exact in bf16 / fp16 / fp32) and the [BN, 16]
    fp32 epilogue of each step applies z and s; sum_k x is one [16]-row sum of the x tile.
  * magic: codes become floats by OR-ing them into the mantissa of 128.0 (bf16 0x4300) or 1024.0
    (fp16 0x6400): (q | 0x4300) read as bf16 is exactly 128 + q, no int -> float conversion;
    the 128 joins the zero point. (fp32 x: a plain conversion; 2^23 would cancel too many bits.)

Half-split packing (autodeploy/quantization/int4.py) gives each [BN, BK] byte tile two [BN, BK]
code tiles, columns j.. (low nibbles) and j + K/2.. (high nibbles), each with its own x tile and
group: two tl.dot per step, loads of BK contiguous bytes per row (16-byte vectors for BK >= 16).

Numerics: the reference rounds (q - z) * s to x's dtype before a bf16 GEMM; here the products are
exact and only fp32 sums round, so the kernel is closer to the fp32 truth than the reference is.
Few N tiles (unfused k / v) split K; fp32 partials are summed with the bias by linear.py's kernel.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import dot_precision, rows_of, unit_stride, unsupported_device_or_dtype
from autodeploy.backends.triton.linear import sum_splits

MAX_ROWS = 16
MIN_BK = 16  # tl.dot's smallest K
# x dtype: (bit pattern OR-ed with a code, the float it is without one) - see the module docstring
MAGIC = {torch.bfloat16: (0x4300, 128.0), torch.float16: (0x6400, 1024.0)}


@triton.jit(do_not_specialize=["M"])  # M = 1 would otherwise compile its own copy of every config
def _int4_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, HALF_K, K_PER_SPLIT,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_om, stride_split,
    GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    MAGIC_BITS: tl.constexpr, MAGIC_VALUE: tl.constexpr,
    PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mask_m = rm < M
    mask_n = rn < N
    rn64 = rn.to(tl.int64)
    j_start = pid_k * K_PER_SPLIT
    j_end = tl.minimum(j_start + K_PER_SPLIT, HALF_K)
    q_ptrs = qw_ptr + rn64[:, None] * stride_qn + (j_start + rk)[None, :]  # [BN, BK] bytes
    x_ptrs = x_ptr + rm[:, None] * stride_xm + (j_start + rk)[None, :]  # [BM, BK], low-nibble columns
    s_row = s_ptr + rn64 * stride_sn  # [BN]
    z_row = z_ptr + rn64 * stride_zn
    xdt = x_ptr.dtype.element_ty
    # scales and zeros of the first step; each step then loads the next step's. [BN] gathers of 2 bytes
    # are narrower than cp.async's 4, so Triton's pipeliner may leave them where they are used, and
    # each step would wait one L2 round trip (~0.3 us: about a step's share of the bandwidth)
    g_lo = j_start // GROUP  # one group per tile: BK divides GROUP and K/2
    g_hi = (j_start + HALF_K) // GROUP
    s_lo = tl.load(s_row + g_lo, mask=mask_n, other=0.0)  # [BN]
    z_lo = tl.load(z_row + g_lo, mask=mask_n, other=0.0)
    s_hi = tl.load(s_row + g_hi, mask=mask_n, other=0.0)
    z_hi = tl.load(z_row + g_hi, mask=mask_n, other=0.0)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for j0 in range(j_start, j_end, BK):
        packed = tl.load(q_ptrs, mask=mask_n[:, None], other=0)  # [BN, BK] uint8: the bytes that matter
        x_lo = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)  # [BM, BK] columns j0..
        x_hi = tl.load(x_ptrs + HALF_K, mask=mask_m[:, None], other=0.0)  # columns j0 + K/2..
        j_next = tl.minimum(j0 + BK, j_end - BK)  # the last step reloads its own (unused)
        s_lo_next = tl.load(s_row + j_next // GROUP, mask=mask_n, other=0.0)
        z_lo_next = tl.load(z_row + j_next // GROUP, mask=mask_n, other=0.0)
        s_hi_next = tl.load(s_row + (j_next + HALF_K) // GROUP, mask=mask_n, other=0.0)
        z_hi_next = tl.load(z_row + (j_next + HALF_K) // GROUP, mask=mask_n, other=0.0)
        if MAGIC_BITS != 0:  # MAGIC_VALUE + code, exactly, from one OR (in int32: no promotion rule in play)
            w_lo = ((packed & 0xF).to(tl.int32) | MAGIC_BITS).to(tl.int16).to(xdt, bitcast=True)  # [BN, BK]
            w_hi = ((packed >> 4).to(tl.int32) | MAGIC_BITS).to(tl.int16).to(xdt, bitcast=True)
        else:
            w_lo = (packed & 0xF).to(xdt)
            w_hi = (packed >> 4).to(xdt)
        d_lo = tl.dot(w_lo, tl.trans(x_lo), input_precision=PRECISION)  # [BN, BM] sum_k (code + magic) x
        d_hi = tl.dot(w_hi, tl.trans(x_hi), input_precision=PRECISION)
        xs_lo = tl.sum(x_lo.to(tl.float32), axis=1)  # [BM] sum_k x
        xs_hi = tl.sum(x_hi.to(tl.float32), axis=1)
        zm_lo = z_lo.to(tl.float32) + MAGIC_VALUE  # [BN] the zero point, plus the magic offset
        zm_hi = z_hi.to(tl.float32) + MAGIC_VALUE
        acc += s_lo.to(tl.float32)[:, None] * (d_lo - zm_lo[:, None] * xs_lo[None, :])
        acc += s_hi.to(tl.float32)[:, None] * (d_hi - zm_hi[:, None] * xs_hi[None, :])
        s_lo, z_lo, s_hi, z_hi = s_lo_next, z_lo_next, s_hi_next, z_hi_next
        q_ptrs += BK
        x_ptrs += BK
    out = tl.trans(acc)  # [BM, BN]
    mask_o = mask_m[:, None] & mask_n[None, :]
    if PARTIAL:  # fp32 partials [split, M, N]
        tl.store(out_ptr + pid_k * stride_split + rm[:, None] * stride_om + rn[None, :], out, mask=mask_o)
    else:
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out.to(out_ptr.dtype.element_ty), mask=mask_o)


def tile_k(half_k: int, group_size: int) -> int:
    """The largest BK (bytes per row per step) keeping each tile inside one group: a power of two
    dividing both K/2 and the group size; under MIN_BK when none fits (the GEMM kernel then)."""
    g = math.gcd(half_k, group_size)
    return g & -g  # its largest power-of-two factor


def unsupported_reason(x: Tensor, qweight: Tensor, group_size: int) -> Optional[str]:
    """Why the GEMV cannot take a call int4_gemm.supports() accepts, or None."""
    n, half_k = qweight.shape
    if x.numel() // max(1, 2 * half_k) > MAX_ROWS:
        return f"more than {MAX_ROWS} rows (the GEMM kernel takes them)"
    if tile_k(half_k, group_size) < MIN_BK:
        return f"K/2 = {half_k} and group {group_size} share no power of two >= {MIN_BK}"
    return None


def normalized(config: dict, m: int, n: int, half_k: int, group_size: int) -> dict:
    """A config made valid for the call: BK inside one group and dividing K/2, whole BK steps per split."""
    bk = min(config["bk"], tile_k(half_k, group_size))
    split = max(1, min(config.get("split", 1), half_k // bk))
    k_per_split = triton.cdiv(triton.cdiv(half_k, split), bk) * bk
    split = triton.cdiv(half_k, k_per_split)
    return dict(config, kind="gemv", bk=bk, split=split, k_per_split=k_per_split, magic=config.get("magic", True))


@functools.lru_cache(maxsize=1024)  # per call at decode
def launch_config(m: int, n: int, half_k: int, group_size: int, sms: int) -> dict:
    """Tile sizes and the K split for one call; not to be mutated.

    Untimed first guess: BK 128 bytes (one g = 128 group per half), and N tiles as wide as still
    leave >= 2 programs per SM (an SM with one program more than the others sets the time: 192
    tiles on 132 SMs run at 192 / 264 of the bandwidth), with stages for ~16-24 KB in flight per SM:
      N / 64 >= 2 SMs (gate_up, lm_head)     BN 64, 4 stages
      N / 32 >= 2 SMs                        BN 32, 6 stages
      otherwise (qkv, o, down of an 8B)      BN 16, 8 stages
    benchmarks/quant_gemv_bench.py times these against a few neighbours.
    """
    if triton.cdiv(n, 64) >= 2 * sms:
        bn, stages = 64, 4
    elif triton.cdiv(n, 32) >= 2 * sms:
        bn, stages = 32, 6
    else:
        bn, stages = 16, 8
    bk = min(128, tile_k(half_k, group_size))
    tiles = triton.cdiv(n, bn)
    split = 1
    if tiles < sms:  # skinny weights (unfused k / v: N = 1024): spread K, >= 4 BK steps per split
        split = max(1, min(triton.cdiv(2 * sms, tiles), half_k // (4 * bk)))
    return normalized(dict(bn=bn, bk=bk, split=split, num_warps=4, num_stages=stages), m, n, half_k, group_size)


def launch(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor], group_size: int,
           config: Optional[dict] = None, sms: int = 132) -> Tensor:
    """The GEMV; the caller (int4_gemm.launch) has checked the call with int4_gemm.unsupported_reason."""
    why = unsupported_reason(x, qweight, group_size) or unsupported_device_or_dtype(x)
    if why:
        raise NotImplementedError(f"triton int4 GEMV: {why}")
    n, half_k = qweight.shape
    x2 = rows_of(x)  # [M, K]
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)  # [M, N]
    if m == 0:
        return out.reshape(*x.shape[:-1], n)
    qweight = unit_stride(qweight)
    cfg = normalized(config, m, n, half_k, group_size) if config else launch_config(m, n, half_k, group_size, sms)
    bits, value = MAGIC.get(x.dtype, (0, 0.0)) if cfg["magic"] else (0, 0.0)
    split = cfg["split"]
    dest = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)  # [S, M, N]
    grid = (triton.cdiv(n, cfg["bn"]), split)
    _int4_gemv_kernel[grid](
        x2, qweight, scales, zeros, bias if bias is not None else scales, dest,
        m, n, half_k, cfg["k_per_split"],
        x2.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), n, m * n,
        GROUP=group_size, BM=16, BN=cfg["bn"], BK=cfg["bk"], MAGIC_BITS=bits, MAGIC_VALUE=value,
        PARTIAL=split > 1, HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split > 1:
        sum_splits(dest, bias, out)
    return out.reshape(*x.shape[:-1], n)
