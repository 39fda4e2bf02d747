"""Int4 weight-only GEMV on the K-major layout: the 1..4-row path of autodeploy::triton_int4_wo_linear_kmajor.

    x [M <= 4, K],  qweight_t [K/8, N] int32,  scales_t, zeros_t [K/g, N]  ->  [M, N]
    (layout: autodeploy/quantization/int4_kmajor.py; word (i, n): 8 codes of column n, one group)

Why a second layout: on the half-split [N, K/2] layout (int4_gemv_fma.py) each thread reduces along
K, so every weight needs its own x value (~one fp32 x load per weight, from L1) and a program holds
few bytes in flight: measured on an H100 it streamed ~0.73 TB/s, instruction / LSU bound. Here a
program owns BN columns and a range of K; x is the same for all its threads (a broadcast), and each
thread accumulates its own columns along K in registers:

    program (n tile, K split), per group of its K range (g / 8 = GW words):
        s, z = scales_t[group, cols], zeros_t[group, cols]      [BN] each, once per group (loaded a group ahead)
        per step of BW words (BW | GW), tile q [BW, BN] int32 (4 or 8 columns per thread, 16-byte loads):
            d[r, c] += sum_j (q_j[r, c] - z[c]) * x[group * g + j * GW + r0 + r]   (plane j: a contiguous x run)
        acc[c] += s[c] * sum_r d[r, c]                                           (r inside the thread: no shuffles)
    split K > 1: fp32 partials [S, M, N]; the last program of an n tile (a ticket, as in
    paged_attention_decode_rope.py) sums them with the bias and stores: one launch, no sum kernel.

Per weight and x row the loop costs one LOP3 (nibble | 0x4B000000: 2^23 + q * 2^S as fp32, the
magic-number trick of int4_gemv_fma.py; nibbles 5..7 after one shift per word), one FFMA
(* 2^-S - (z + 2^23 2^-S) = q - z, exactly) and one FFMA into d: 3 lane-instructions, plus per word a
shift, per x value a bf16 -> fp32 conversion (~2 instructions) shared by the thread's C columns, and
address arithmetic. Counted in the sm_90 SASS (Triton 3.6) of the default config: 2110 instructions per
loop trip (one g = 128 group, 16 words x 4 columns x 8 nibbles = 512 weights a thread), 4.1 per weight.

Default launch config (launch_config), the arithmetic for an H100 (132 SMs, ~3 TB/s, ~1.75 GHz):
  * HBM rate per SM: 3e12 / 132 / 1.75e9 = 13 bytes = 26 int4 weights per cycle, against 4 warp
    instructions (128 lanes) per cycle: a budget of ~4.9 lane-instructions per weight; 4.1 used at
    one row (~84% of the issue slots: the rate stays HBM-bound only if latency is hidden).
  * bytes in flight: Little's law, 3 TB/s x ~1 us loaded latency = ~3 MB, ~23 KB per SM. Each
    program loads step i + 1 while it computes step i: BW x BN x 4 = 8 x 256 x 4 = 8 KB in flight per
    program; 168 registers x 64 threads = 10.8 K of the SM's 64 K, so the ~3-4 programs per SM the grid
    provides are resident together: 24-32 KB in flight per SM.
  * BN = 256 with 2 warps: 4 columns per thread (one 16-byte load per word row), all BW rows of a
    column in one thread (BN >= 128 x num_warps: Triton's blocked layout then puts every thread and
    warp along N, so the sum over r is register adds). 8 columns a thread (BN 512, 2 warps) would
    share each x conversion by 8 (3.8 per weight) but took 255 registers with spills and a
    shared-memory layout change of s / z per group in the SASS; it is one of the benchmarked neighbours.
  * split K so that the grid has ~4 programs per SM (an SM with one program more than the others
    sets the time), in whole groups: 8B qkv (24 n tiles, 32 groups) 16 splits of 2 groups, o (16
    tiles) 32 of 1, gate_up (112 tiles) 5 of 7, down (16 tiles, 112 groups) 28 of 4.
benchmarks/quant_gemv_bench.py ("int4 kmaj") times neighbours (BN, BW, warps, split).

Numerics: codes and q - z are exact, products and sums fp32, as the other int4 GEMVs: closer to the
fp32 truth than the reference (which rounds (q - z) * s to x's dtype before its GEMM).

bf16 x on a GPU runs the twin in int4_kmajor_gemv_bf16x2.py instead (two weights an instruction; launch()
picks it): this kernel serves fp16 / fp32 x, the interpreter, and AUTODEPLOY_INT4_BF16X2=0.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import (pdl_enabled, pdl_launch, pdl_prefetch_enabled, pdl_wait_and_release,
                                                tickets, unsupported_device_or_dtype)
from autodeploy.backends.triton import int4_kmajor_gemv_bf16x2
from autodeploy.backends.triton.int4_gemv_fma import MAGIC_BITS, _codes
from autodeploy.backends.triton.int4_kmajor_split import _add_group, _finish, _group_scales

MAX_ROWS = 4  # one FFMA per weight and row: beyond ~4 rows the tl.dot GEMM (int4_kmajor_gemm.py) wins


@triton.jit
def _row_products(d, word, upper, magic, zm0, zm4, zm8, zm12, zm16, xp, GW: tl.constexpr):
    """d [BW, BN] plus the sum over the 8 nibble planes of (q - z) * x for one x row (d passed in: 8 FFMAs per
    element, no product to add afterwards). word: the tile; nibbles 0..4 sit
    at bits 0..19 of it, where the magic number takes them as they are; upper = word >> 12 holds nibbles
    5..7 at bits 8..19. (A nibble at bits 0..3 of a shifted word is what LLVM turns into a bit-field
    extract, one instruction more than the LOP3 that masks and ORs in one.) zmS = z + 2^23 / 2^S [1, BN];
    xp [BW]: plane 0's x, plane j at xp + j * GW (a contiguous run each)."""
    d += _codes(word, 0, magic, zm0) * tl.load(xp).to(tl.float32)[:, None]
    d += _codes(word, 4, magic, zm4) * tl.load(xp + GW).to(tl.float32)[:, None]
    d += _codes(word, 8, magic, zm8) * tl.load(xp + 2 * GW).to(tl.float32)[:, None]
    d += _codes(word, 12, magic, zm12) * tl.load(xp + 3 * GW).to(tl.float32)[:, None]
    d += _codes(word, 16, magic, zm16) * tl.load(xp + 4 * GW).to(tl.float32)[:, None]
    d += _codes(upper, 8, magic, zm8) * tl.load(xp + 5 * GW).to(tl.float32)[:, None]
    d += _codes(upper, 12, magic, zm12) * tl.load(xp + 6 * GW).to(tl.float32)[:, None]
    d += _codes(upper, 16, magic, zm16) * tl.load(xp + 7 * GW).to(tl.float32)[:, None]
    return d


@triton.jit
def _int4_kmajor_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,
    M, N, GROUPS_PER_SPLIT, N_GROUPS, magic,
    stride_xm, stride_qw, stride_sg, stride_zg, stride_om,
    ROWS: tl.constexpr, GW: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = False,
    W_EVICT: tl.constexpr = "",
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    STEPS: tl.constexpr = GW // BW  # steps per group
    rn = pid_n * BN + tl.arange(0, BN)  # [BN]
    mask_n = rn < N
    rw = tl.arange(0, BW)  # [BW]
    g_start = pid_k * GROUPS_PER_SPLIT
    g_end = tl.minimum(g_start + GROUPS_PER_SPLIT, N_GROUPS)
    w_last = g_end * GW - BW  # the split's last step (its prefetch reloads itself)
    q_ptrs = qw_ptr + (g_start * GW + rw).to(tl.int64)[:, None] * stride_qw + rn[None, :]  # [BW, BN] int32
    x_rows = x_ptr + rw  # [BW]; row m of x at + m * stride_xm
    acc0 = tl.zeros((BN,), dtype=tl.float32)
    acc1 = tl.zeros((BN,), dtype=tl.float32)
    acc2 = tl.zeros((BN,), dtype=tl.float32)
    acc3 = tl.zeros((BN,), dtype=tl.float32)
    # the split's first words are read-only weights: with PREFETCH they are loaded before the wait (during
    # the previous kernel's tail, _common.py: weight prefetch); x, out, partials and tickets only after it
    if PREFETCH:
        word = tl.load(q_ptrs, mask=mask_n[None, :], other=0, eviction_policy=W_EVICT)
        s_cur, z_cur = _group_scales(s_ptr, z_ptr, g_start, stride_sg, stride_zg, rn, mask_n, W_EVICT)
    pdl_wait_and_release(PDL)
    if not PREFETCH:
        word = tl.load(q_ptrs, mask=mask_n[None, :], other=0, eviction_policy=W_EVICT)
        s_cur, z_cur = _group_scales(s_ptr, z_ptr, g_start, stride_sg, stride_zg, rn, mask_n, W_EVICT)
    for g in range(g_start, g_end):
        # the next group's s / z in flight during this one (the last group reloads its own): z is needed at
        # the group's first step, so loading it there would expose a DRAM round trip per group
        s_next, z_next = _group_scales(s_ptr, z_ptr, tl.minimum(g + 1, g_end - 1), stride_sg, stride_zg, rn, mask_n,
                                       W_EVICT)
        s = s_cur.to(tl.float32)  # [BN]
        z = z_cur.to(tl.float32)
        zm0 = (z + 8388608.0)[None, :]  # z + 2^23 / 2^S for nibbles at bit S = 0, 4, .. 16: see _codes
        zm4 = (z + 524288.0)[None, :]
        zm8 = (z + 32768.0)[None, :]
        zm12 = (z + 2048.0)[None, :]
        zm16 = (z + 128.0)[None, :]
        d0 = tl.zeros((BW, BN), dtype=tl.float32)
        d1 = tl.zeros((BW, BN), dtype=tl.float32)
        d2 = tl.zeros((BW, BN), dtype=tl.float32)
        d3 = tl.zeros((BW, BN), dtype=tl.float32)
        for step in tl.static_range(STEPS):
            w_cur = g * GW + step * BW
            # the next step's words are in flight while this one computes
            word_next = tl.load(q_ptrs + (tl.minimum(w_cur + BW, w_last) - w_cur) * stride_qw,
                                mask=mask_n[None, :], other=0, eviction_policy=W_EVICT)
            upper = (word.to(tl.uint32, bitcast=True) >> 12).to(tl.int32, bitcast=True)  # nibbles 5..7 at bits 8..19
            xp = x_rows + g * (8 * GW) + step * BW  # [BW] plane 0 of this step
            d0 = _row_products(d0, word, upper, magic, zm0, zm4, zm8, zm12, zm16, xp, GW)
            if ROWS > 1:
                d1 = _row_products(d1, word, upper, magic, zm0, zm4, zm8, zm12, zm16, xp + stride_xm, GW)
            if ROWS > 2:
                d2 = _row_products(d2, word, upper, magic, zm0, zm4, zm8, zm12, zm16, xp + 2 * stride_xm, GW)
            if ROWS > 3:
                d3 = _row_products(d3, word, upper, magic, zm0, zm4, zm8, zm12, zm16, xp + 3 * stride_xm, GW)
            word = word_next
            q_ptrs += BW * stride_qw
        acc0, acc1, acc2, acc3 = _add_group(acc0, acc1, acc2, acc3, d0, d1, d2, d3, s, ROWS)
        s_cur = s_next
        z_cur = z_next
    _finish(acc0, acc1, acc2, acc3, out_ptr, part_ptr, bias_ptr, ticket_ptr, rn, mask_n, M, N, stride_om, pid_n, pid_k,
            ROWS, BN, SPLIT, HAS_BIAS)


def unsupported_reason(x2: Tensor, qweight_t: Tensor, group_size: int) -> Optional[str]:
    """Why this GEMV cannot take a call int4_kmajor_gemm.supports() accepts, or None."""
    if x2.shape[0] > MAX_ROWS:
        return f"more than {MAX_ROWS} rows"
    if x2.shape[0] == 0:
        return "no rows"
    if qweight_t.stride(-1) != 1:
        return "qweight_t must have unit stride along N"
    return None


def normalized(config: dict, m: int, n: int, k: int, group_size: int) -> dict:
    """A config made valid for the call: BW a power of two dividing g / 8, whole groups per split."""
    gw = group_size // 8
    bw = max(1, min(config["bw"], gw))
    bn = triton.next_power_of_2(max(16, min(config["bn"], triton.next_power_of_2(n))))
    groups = k // group_size
    split = max(1, min(config.get("split", 1), groups))
    per_split = triton.cdiv(groups, split)
    return dict(config, kind="gemv", bn=bn, bw=bw, split=triton.cdiv(groups, per_split), groups_per_split=per_split)


@functools.lru_cache(maxsize=1024)  # per call at decode
def launch_config(m: int, n: int, k: int, group_size: int, sms: int, bf16x2: bool = False) -> dict:
    """The untimed default (module docstring: why these numbers); not to be mutated. bf16x2: the config of
    int4_kmajor_gemv_bf16x2.py's kernel, whose one-row programs take 128 registers (this kernel's 168), so
    8 fit an SM: a K split for ~8 programs per SM where there are fewer n tiles than SMs, measured on the H200
    (BENCHMARKS.md, eleventh session) 8B qkv 10.7 -> 7.2 us, gate_up 26.0 -> 20.8, down 17.8 -> 12.5."""
    bn, warps = 256, 2  # 4 columns per thread: 16-byte loads, no shared-memory shuffles (sm_90 SASS)
    bw = 8 if m <= 2 else 4  # d accumulators: rows x BW x 4 columns of registers
    tiles = triton.cdiv(n, bn)
    # 8 where the K split makes the parallelism (tiles < SMs: 8B qkv, o, gate_up, down); the lm_head's 501 tiles
    # keep 4 (bf16x2 73.5 us at ~4 a SM, 76.9 at ~8: BENCHMARKS.md eleventh session)
    per_sm = int4_kmajor_gemv_bf16x2.programs_per_sm() if bf16x2 and m == 1 and tiles < sms else 4
    split = triton.cdiv(per_sm * sms, tiles)  # ~4 (8) programs per SM; normalized() rounds to whole groups per split
    cfg = normalized(dict(bn=bn, bw=bw, split=split, num_warps=warps, num_stages=1), m, n, k, group_size)
    one_group = cfg["groups_per_split"] == 1 and group_size // 8 <= 16
    if bf16x2 and m == 1 and one_group and int4_kmajor_gemv_bf16x2.one_step():
        cfg = dict(cfg, bw=group_size // 8, one_group=True)  # 8B qkv / o: int4_kmajor_gemv_bf16x2.py, "One step"
    return cfg


def launch(x2: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor, bias: Optional[Tensor],
           group_size: int, config: Optional[dict] = None, sms: int = 132) -> Tensor:
    """x2 [M, K] (unit stride on K) -> [M, N]; the caller (int4_kmajor_gemm.launch) has checked the operands."""
    why = unsupported_reason(x2, qweight_t, group_size) or unsupported_device_or_dtype(x2)
    if why:
        raise NotImplementedError(f"triton int4 K-major GEMV: {why}")
    m, k = x2.shape
    n = qweight_t.shape[1]
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)  # [M, N]
    if config:
        cfg = normalized(config, m, n, k, group_size)
        packed = int4_kmajor_gemv_bf16x2.usable(x2, cfg)
    else:  # the defaults' BW (4, 8) always suits the bf16x2 kernel: whether it runs decides the config
        packed = int4_kmajor_gemv_bf16x2.usable(x2)
        cfg = launch_config(m, n, k, group_size, sms, packed)
    split, tiles = cfg["split"], triton.cdiv(n, cfg["bn"])
    if split > 1:
        part = torch.empty(split, m, n, dtype=torch.float32, device=x2.device)  # [S, M, N]
        counters = tickets(x2.device, tiles)
    else:
        part = counters = out  # unused
    ptrs = (x2, qweight_t, scales_t, zeros_t, bias if bias is not None else scales_t, out, part, counters)
    strides = (x2.stride(0), qweight_t.stride(0), scales_t.stride(0), zeros_t.stride(0), out.stride(0))
    meta = dict(ROWS=m, GW=group_size // 8, BN=cfg["bn"], BW=cfg["bw"], SPLIT=split, HAS_BIAS=bias is not None,
                PDL=pdl_enabled(x2.device), PREFETCH=pdl_prefetch_enabled(x2.device), num_warps=cfg["num_warps"],
                num_stages=cfg["num_stages"], **int4_kmajor_gemv_bf16x2.load_meta(), **pdl_launch(x2.device))
    if packed:  # bf16 x on a GPU: two weights an instruction
        one = bool(cfg.get("one_group")) and cfg["groups_per_split"] == 1 and cfg["bw"] == group_size // 8 and m == 1
        extra = dict(ONE_GROUP=True, maxnreg=int4_kmajor_gemv_bf16x2.ONE_STEP_REGISTERS) if one else {}
        int4_kmajor_gemv_bf16x2._int4_kmajor_gemv_bf16x2_kernel[(tiles, split)](
            *ptrs, m, n, cfg["groups_per_split"], k // group_size, *strides, **extra, **meta)
    else:
        _int4_kmajor_gemv_kernel[(tiles, split)](
            *ptrs, m, n, cfg["groups_per_split"], k // group_size, MAGIC_BITS, *strides, **meta)
    return out
