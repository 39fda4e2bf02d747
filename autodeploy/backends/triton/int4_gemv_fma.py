"""Int4 weight-only GEMV without tl.dot: the 1..4-row path of autodeploy::triton_int4_wo_linear.

    x [M <= 4, K],  qweight [N, K/2] uint8 (half-split),  scales, zeros [N, K/g]  ->  [M, N]

At batch 1 an H100 must consume ~29 int4 weights per SM per cycle to keep up with HBM (3 TB/s over
132 SMs at 1.75 GHz), against 128 fp32 lanes: about 4 instructions per weight for everything. The
tl.dot GEMV (int4_gemv.py) spends them on moving unpacked tiles into MMA operand layouts and pads x
to 16 rows; here each weight costs an AND-OR (one LOP3), a subtraction and an FMA, in registers:

  * qweight is read as int32 words [N, K/8]: word i of a row is bytes 4i..4i+3, i.e. columns
    4i..4i+3 (low nibbles) and K/2 + 4i..K/2 + 4i+3 (high nibbles). The 8 nibbles are 8 "planes"
    [BN, NG, GW], each a weight tile multiplied by its own x tile (x[4i + b] or x[K/2 + 4i + b]),
    so no nibble ever moves between lanes. Loads are 16 contiguous bytes per thread.
  * magic, without shifts: (word & (0xF << 4j)) | 0x4B000000 read as fp32 is 2^23 + q * 16^j,
    exactly, for nibble j = 0..3 of the word (j = 4..7: of the word >> 16, one shift per word).
    Subtracting 2^23 leaves q * 16^j; x is scaled by 16^-j instead (a power of two: exact), so
    the products are q * x. No int -> float conversion (I2F runs at a quarter of the FMA rate).
  * scales and zeros leave the inner loop: per group, s * (sum q x - z sum x). A step covers NG
    whole group chunks of GW words in each half; the products of a chunk are scaled by its [BN, NG]
    scales in place (one FMA per word and half), the z * sum x term is a [BN, NG] update, and the
    GW axis is reduced once, after the loop.

One program is one x row and BN weight rows; the rows of a multi-row call are neighbouring programs
(the fastest grid axis), so the second reads the weight tile from L2. Beyond ~4 rows the FMAs
(one per weight and row) cost more than the tl.dot path's overhead: int4_gemm sends those there.
Few N tiles (unfused k / v) split K; fp32 partials are summed with the bias by linear.py's kernel.

Numerics: products and sums are fp32 and the codes exact, as in int4_gemv.py: closer to the fp32
truth than the reference, which rounds (q - z) * s to x's dtype first.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton import int4_gemv
from autodeploy.backends.triton.linear import sum_splits

MAGIC_BITS = 0x4B000000  # fp32 2^23
MAX_ROWS = 4  # more rows: int4_gemv.py's tl.dot (one FMA per weight and row stops paying)


@triton.jit
def _codes(word, SHIFT: tl.constexpr, magic, zm):
    """q - z in fp32 for the nibble at bit SHIFT (<= 19: q * 2^SHIFT < 2^23) of each int32 word, given zm = z + 2^23 / 2^SHIFT:
    (word & (0xF << SHIFT)) | 0x4B000000 is, as fp32, 2^23 + q * 16^(SHIFT / 4) (2^23: the low 23 mantissa
    bits hold an integer exactly); one FMA scales it by the power of two 16^-(SHIFT / 4) and subtracts zm,
    exactly. No int -> float conversion. `magic` (0x4B000000) comes as a run-time argument: with two immediates
    the AND and the OR are two instructions, with one they fuse into one LOP3."""
    bits = (word & (0xF << SHIFT)) | magic
    return bits.to(tl.float32, bitcast=True) * (1.0 / (1 << SHIFT)) - zm


@triton.jit
def _x_plane(x_ptrs, PLANE: tl.constexpr, STEP: tl.constexpr, HALF_K, X_PLANES: tl.constexpr):
    """x of one nibble plane at the step's words, [1, NG, GW] in fp32: plane p = 2b + h is byte b's low
    (h = 0) or high (h = 1) nibble, column h * K/2 + 4 w + b. From prepared planes (x_planes(): 16-byte
    loads at a constant offset) or gathered from x itself (one 2-byte load per word, from L1)."""
    if X_PLANES:
        return tl.load(x_ptrs + PLANE * STEP)
    else:
        return tl.load(x_ptrs + (PLANE % 2) * HALF_K + PLANE // 2).to(tl.float32)


@triton.jit(do_not_specialize=["M"])
def _int4_gemv_fma_kernel(
    x_ptr, xp_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, HALF_K, WORDS_PER_SPLIT, magic,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_om, stride_split,
    LOG2_GROUP: tl.constexpr, BN: tl.constexpr, NG: tl.constexpr, GW: tl.constexpr, X_PLANES: tl.constexpr,
    PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m = pid % M  # rows of x: neighbouring programs, one weight tile (the second reads it from L2)
    pid_n = pid // M
    pid_k = tl.program_id(1)
    CHUNK: tl.constexpr = 4 * GW  # columns per half of one group chunk (inside one group)
    STEP: tl.constexpr = NG * GW  # words per row per step
    K_WORDS = HALF_K // 4
    rn = pid_n * BN + tl.arange(0, BN)[:, None, None]  # [BN, 1, 1]
    mask_n = rn < N
    rn64 = rn.to(tl.int64)
    rg = tl.arange(0, NG)[None, :, None]  # [1, NG, 1]
    w_start = pid_k * WORDS_PER_SPLIT
    w_end = tl.minimum(w_start + WORDS_PER_SPLIT, K_WORDS)
    w_offs = w_start + rg * GW + tl.arange(0, GW)[None, None, :]  # [1, NG, GW] the step's words
    q_ptrs = qw_ptr + rn64 * stride_qn + w_offs  # [BN, NG, GW] int32
    if X_PLANES:  # [M, K/8 / STEP, 8, STEP] fp32: a step's 8 planes are one contiguous block
        x_ptrs = xp_ptr + pid_m * (8 * K_WORDS) + 8 * w_start + (w_offs - w_start)  # [1, NG, GW]
    else:  # x [M, K]: column 4 w + b of the low half
        x_ptrs = x_ptr + pid_m * stride_xm + 4 * w_offs
    s_ptrs = s_ptr + rn64 * stride_sn  # [BN, 1, 1]
    z_ptrs = z_ptr + rn64 * stride_zn
    acc = tl.zeros((BN, NG, GW), dtype=tl.float32)  # sum over steps of s * (q - z) x
    word = tl.load(q_ptrs, mask=mask_n, other=0)
    for w0 in range(w_start, w_end, STEP):
        # the next step's words are in flight while this one computes (the last step reloads its own)
        word_next = tl.load(q_ptrs + (tl.minimum(w0 + STEP, w_end - STEP) - w0), mask=mask_n, other=0)
        # [1, NG, 1] each chunk's group in the low / high half (a shift: the columns are >= 0, GROUP a power of two)
        g_lo = (4 * w0 + rg * CHUNK) >> LOG2_GROUP
        g_hi = (HALF_K + 4 * w0 + rg * CHUNK) >> LOG2_GROUP
        s_lo = tl.load(s_ptrs + g_lo, mask=mask_n, other=0.0).to(tl.float32)  # [BN, NG, 1]
        s_hi = tl.load(s_ptrs + g_hi, mask=mask_n, other=0.0).to(tl.float32)
        z_lo = tl.load(z_ptrs + g_lo, mask=mask_n, other=0.0).to(tl.float32)
        z_hi = tl.load(z_ptrs + g_hi, mask=mask_n, other=0.0).to(tl.float32)
        upper = word >> 16  # bytes 2 and 3 at bits 0..15 (the sign bits above are masked off)
        # nibble at bit 0 / 4 / 8 / 12 of word and upper: planes 0, 1, 2, 3 and 4, 5, 6, 7
        zm0 = z_lo + 8388608.0
        zm1 = z_hi + 524288.0
        zm2 = z_lo + 32768.0
        zm3 = z_hi + 2048.0
        d_lo = _codes(word, 0, magic, zm0) * _x_plane(x_ptrs, 0, STEP, HALF_K, X_PLANES)
        d_lo += _codes(word, 8, magic, zm2) * _x_plane(x_ptrs, 2, STEP, HALF_K, X_PLANES)
        d_lo += _codes(upper, 0, magic, zm0) * _x_plane(x_ptrs, 4, STEP, HALF_K, X_PLANES)
        d_lo += _codes(upper, 8, magic, zm2) * _x_plane(x_ptrs, 6, STEP, HALF_K, X_PLANES)
        d_hi = _codes(word, 4, magic, zm1) * _x_plane(x_ptrs, 1, STEP, HALF_K, X_PLANES)
        d_hi += _codes(word, 12, magic, zm3) * _x_plane(x_ptrs, 3, STEP, HALF_K, X_PLANES)
        d_hi += _codes(upper, 4, magic, zm1) * _x_plane(x_ptrs, 5, STEP, HALF_K, X_PLANES)
        d_hi += _codes(upper, 12, magic, zm3) * _x_plane(x_ptrs, 7, STEP, HALF_K, X_PLANES)
        acc += s_lo * d_lo + s_hi * d_hi  # [BN, NG, GW]
        word = word_next
        q_ptrs += STEP
        if X_PLANES:
            x_ptrs += 8 * STEP
        else:
            x_ptrs += 4 * STEP
    out = tl.sum(tl.sum(acc, axis=2), axis=1)  # [BN]
    rn1 = pid_n * BN + tl.arange(0, BN)
    mask_n1 = rn1 < N
    if PARTIAL:  # fp32 partials [split, M, N]
        tl.store(out_ptr + pid_k * stride_split + pid_m * stride_om + rn1, out, mask=mask_n1)
    else:
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn1, mask=mask_n1, other=0.0).to(tl.float32)
        tl.store(out_ptr + pid_m * stride_om + rn1, out.to(out_ptr.dtype.element_ty), mask=mask_n1)


def x_planes(x2: Tensor, step: int) -> Tensor:
    """x2 [M, K] -> [M, K/8 / step, 8, step] fp32 (one copy kernel): per step of `step` words, plane p = 2b + h
    holds column h * K/2 + 4i + b at word i. The kernel then loads each plane with 16-byte vectors at a
    constant offset from one pointer, instead of 2-byte gathers and conversions per word."""
    m, k = x2.shape
    steps = k // 8 // step
    planes = torch.empty(m, steps, 4, 2, step, dtype=torch.float32, device=x2.device)  # [M, c, b, h, i]
    planes.copy_(x2.view(m, 2, steps, step, 4).permute(0, 2, 4, 1, 3))
    return planes.view(m, steps, 8, step)


def unsupported_reason(x: Tensor, qweight: Tensor, group_size: int) -> Optional[str]:
    """Why this GEMV cannot take a call int4_gemm.supports() accepts, or None."""
    n, half_k = qweight.shape
    if x.numel() // max(1, 2 * half_k) > MAX_ROWS:
        return f"more than {MAX_ROWS} rows"
    if int4_gemv.tile_k(half_k, group_size) < 16:  # a chunk of 4 words: one 16-byte load per thread
        return f"K/2 = {half_k} and group {group_size} share no power of two >= 16"
    if qweight.storage_offset() % 4 or (qweight.dim() == 2 and qweight.stride(-1) != 1):
        return "qweight is not readable as int32 words (offset or stride)"
    return None


def normalized(config: dict, n: int, half_k: int, group_size: int) -> dict:
    """A config made valid for the call: chunks inside one group, steps of whole chunks dividing K/2,
    whole steps per split."""
    chunk = min(config["bk"], int4_gemv.tile_k(half_k, group_size))  # columns per half, in one group
    bk = max(chunk, 1 << (min(config["bk"], half_k).bit_length() - 1))  # a power of two (tl.arange)
    while half_k % bk:  # chunk, a power of two too, divides K/2
        bk //= 2
    words = half_k // 4
    step = bk // 4
    split = max(1, min(config.get("split", 1), words // step))
    per_split = triton.cdiv(triton.cdiv(words, split), step) * step
    split = triton.cdiv(words, per_split)
    return dict(config, kind="gemv_fma", x_planes=config.get("x_planes", True), bk=bk, ng=bk // chunk, gw=chunk // 4, split=split, words_per_split=per_split)


@functools.lru_cache(maxsize=1024)  # per call at decode
def launch_config(m: int, n: int, half_k: int, group_size: int, sms: int) -> dict:
    """Untimed first guess; not to be mutated.

    Each SM needs ~20-30 KB of weight loads in flight to hide HBM latency (~1 us at ~23 GB/s per
    SM), and the last wave costs as much as a full one, so: N tiles as wide as still leave >= 2
    programs per SM (8B o / down: 8 rows, qkv: 16, gate_up and lm_head: 64), 256 bytes of each row
    per step (two g = 128 groups per half), 128 at BN = 64. Tiles of > 16 words per thread, or NG > 2
    chunks per step, got layouts with shared-memory shuffles in the loop (sm_90 SASS, Triton 3.6). Stages do nothing here: Triton's
    pipeliner leaves these loads alone (no cp.async in the SASS); the kernel loads one step ahead itself.
    Skinny weights (unfused k / v: N = 1024) split K. benchmarks/quant_gemv_bench.py times neighbours.
    """
    bn = next(b for b in (64, 32, 16, 8) if b == 8 or triton.cdiv(n, b) >= 2 * sms)
    bk = 128 if bn >= 64 else 256
    tiles = triton.cdiv(n, bn)
    split = 1
    if tiles < sms:  # >= 4 steps per split
        split = max(1, min(triton.cdiv(2 * sms, tiles), half_k // (4 * bk)))
    return normalized(dict(bn=bn, bk=bk, split=split, num_warps=4, num_stages=1), n, half_k, group_size)


def launch(x2: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor], group_size: int,
           config: Optional[dict] = None, sms: int = 132) -> Tensor:
    """x2 [M, K] (unit stride on K) -> [M, N]; the caller (int4_gemm.launch) has checked the operands."""
    why = unsupported_reason(x2, qweight, group_size)
    if why:
        raise NotImplementedError(f"triton int4 FMA GEMV: {why}")
    m = x2.shape[0]
    n, half_k = qweight.shape
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)  # [M, N]
    if m == 0:
        return out
    words = qweight.contiguous().view(torch.int32)  # [N, K/8]: K/2 is a multiple of 16 (unsupported_reason)
    cfg = normalized(config, n, half_k, group_size) if config else launch_config(m, n, half_k, group_size, sms)
    split = cfg["split"]
    dest = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x2.device)  # [S, M, N]
    xp = x_planes(x2, cfg["ng"] * cfg["gw"]) if cfg["x_planes"] else x2  # [M, K/8 / step, 8, step] fp32, or x
    _int4_gemv_fma_kernel[(m * triton.cdiv(n, cfg["bn"]), split)](
        x2, xp, words, scales, zeros, bias if bias is not None else scales, dest,
        m, n, half_k, cfg["words_per_split"], MAGIC_BITS,
        x2.stride(0), words.stride(0), scales.stride(0), zeros.stride(0), n, m * n,
        LOG2_GROUP=group_size.bit_length() - 1, BN=cfg["bn"], NG=cfg["ng"], GW=cfg["gw"], X_PLANES=cfg["x_planes"],
        PARTIAL=split > 1, HAS_BIAS=bias is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split > 1:
        sum_splits(dest, bias, out)
    return out
