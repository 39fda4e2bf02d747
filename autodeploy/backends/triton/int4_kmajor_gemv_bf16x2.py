"""Int4 weight-only GEMV on the K-major layout with packed bf16x2 math: the bf16 path of int4_kmajor_gemv.py.

    x [M <= 4, K] bf16,  qweight_t [K/8, N] int32,  scales_t, zeros_t [K/g, N]  ->  [M, N]
    (layout: autodeploy/quantization/int4_kmajor.py; word (i, n): 8 codes of column n, one group)

Why: int4_kmajor_gemv.py spends ~4.1 instructions per weight (fp32: a LOP3 and two FFMAs per weight);
an H200 streams int4 weights at ~37 per SM cycle against 128 lane-instructions an SM issues per
cycle, a budget of ~3.5 per weight: that kernel is issue bound there (~1.1-2.4 TB/s measured). Here
two weights share each instruction (Hopper and Ampere's bf16x2 FMA):

    nibble pair p of a word = (nibble p, nibble p + 4) = the halves of (word >> 4p) & 0x000F000F;
    OR 0x43004300: each half is the bf16 of 128 + q, exact (bf16 spacing is 1 on [128, 256))
    one bf16x2 FMA (* 1 - (128 + z)): q - z in each half, exactly (whole numbers, |q - z| <= 15)
    products with x in a chain of 8 bf16x2 FMAs over the 4 pairs of two words (rows 2i, 2i + 1 of a
    step: the program loads even and odd word rows as two tiles), then the chain's two halves as fp32
    (bf16 -> fp32 is moving the bits up) added into the fp32 accumulator d [BW / 2, BN].
    x pairs (x of plane p, x of plane p + 4) for a word row: one PRMT of two int32 loads of x (which
    hold rows 2i, 2i + 1 of a plane), shared by the thread's 4 columns.

Per 16 weights of a row: 6 shifts, 8 LOP3, 8 FMAs for q - z, 8 for the products, 4 to fold the chain
into fp32, ~1 for x. Counted in the sm_90 SASS (Triton 3.6) of the one-row default: 2.73 instructions a
weight in the loop (int4_kmajor_gemv.py: 4.11), 128 registers (167), so 8 programs fit an SM and the
default K split gives ~8 (int4_kmajor_gemv.launch_config). Scales and the split-K merge: int4_kmajor_split.py.
Measured on the H200 (BENCHMARKS.md, eleventh session): 8B gate_up 38.6 -> 20.7 us, the INT4 step 3.93 ->
2.78 ms.

Loads: a group's scales and zeros are read one group ahead (the first group's before the PDL wait, with the
first step's words): z is needed at a group's first step, and loaded there it was a DRAM round trip per
group (8B INT4 step -17 us). Weight words, scales and zeros are loaded evict_first in L1 and L2 (read once a
step, they should leave the caches before anything else does; 8B INT4 step on the H200 2.011 -> 1.932 ms,
BENCHMARKS.md twelfth session; load_meta, AUTODEPLOY_INT4_W_LOAD=none for plain loads).

One step (AUTODEPLOY_INT4_ONE_STEP=1; off by default until an end-to-end A/B: written and passing the GPU
tests in the twelfth session, not yet timed): where a program's K range is a single group (8B qkv and o at
one row: split 32), the launch runs the group as one step (BW = g / 8 word rows) with ONE_GROUP: every word
of the program is loaded before the PDL wait and nothing after it but x, where the two-step default waits
for its second step's words after the wait (a DRAM round trip). ptxas schedules the whole group's
dequantization early (221 registers); capped at ONE_STEP_REGISTERS (maxnreg, 14 spill instructions) 6
programs fit an SM, the 768 / 512 programs of qkv / o in one wave. (The group's scales are still reloaded as
a next group's would be: dropping that L1 hit made ptxas spill 514 instructions at the same cap.)

Numerics: q - z exact; each product rounded to bf16 and the chain of 8 summed in bf16 (relative error
~2^-9 per step), then fp32. Against an fp32 product of the same quantized operands: 48.3-48.8 dB on the 8B
shapes (H200; ~49 emulated on CPU), where the fp32-math kernel gives ~55.5 and the INT4 quantization
itself ~20. bf16 x only: products of fp16 x by |q - z| <= 15 could
overflow fp16, and fp32 x would lose its low bits; those keep the fp32 path.

The interpreter (TRITON_INTERPRET=1) cannot run PTX: on a CPU int4_kmajor_gemv.py's fp32 path runs;
tests/gpu/test_int4_kmajor.py checks this kernel on the GPU.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import interpreted, pdl_wait_and_release
from autodeploy.backends.triton.int4_kmajor_split import _add_group, _finish, _group_scales

# -(128 + z) per half is passed in (nzz); `one` is bf16x2 (1, 1)
_DEQUANT_ASM = tl.constexpr("""{
.reg .b32 t, one;
mov.b32 one, 0x3F803F80;
lop3.b32 t, $4, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $0, t, one, $5;
shr.u32 t, $4, 4;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $1, t, one, $5;
shr.u32 t, $4, 8;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $2, t, one, $5;
shr.u32 t, $4, 12;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $3, t, one, $5;
}""")

# $1..$8: (q - z) pairs of an even and an odd word row, $9..$16: their x pairs. -0.0 starts the chain so the
# first product is rounded once; the chain's halves (hi: bits 16..31, lo: bits 0..15) become fp32 by moving
# the bits up, and their sum is the result.
_DOT_ASM = tl.constexpr("""{
.reg .b32 p, lo, hi;
mov.b32 p, 0x80008000;
fma.rn.bf16x2 p, $1, $9, p;
fma.rn.bf16x2 p, $2, $10, p;
fma.rn.bf16x2 p, $3, $11, p;
fma.rn.bf16x2 p, $4, $12, p;
fma.rn.bf16x2 p, $5, $13, p;
fma.rn.bf16x2 p, $6, $14, p;
fma.rn.bf16x2 p, $7, $15, p;
fma.rn.bf16x2 p, $8, $16, p;
shl.b32 lo, p, 16;
and.b32 hi, p, 0xFFFF0000;
add.f32 $0, lo, hi;
}""")

_LOW_HALVES_ASM = tl.constexpr("prmt.b32 $0, $1, $2, 0x5410;")  # (a.lo, b.lo)
_HIGH_HALVES_ASM = tl.constexpr("prmt.b32 $0, $1, $2, 0x7632;")  # (a.hi, b.hi)


@triton.jit
def _dequant(word, nzz):
    """word [BWH, BN] int32, nzz [1, BN] bf16x2 of -(128 + z) twice -> 4 x [BWH, BN] int32: pair p is the
    bf16x2 (q - z of nibble p, q - z of nibble p + 4)."""
    return tl.inline_asm_elementwise(_DEQUANT_ASM, "=r,=r,=r,=r,r,r", [word, nzz],
                                     dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _halves(a, b, HIGH: tl.constexpr):
    """bf16x2 of a's and b's low (or high) halves: [BWH] int32 each."""
    if HIGH:
        return tl.inline_asm_elementwise(_HIGH_HALVES_ASM, "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(_LOW_HALVES_ASM, "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _row_step(d, e0, e1, e2, e3, o0, o1, o2, o3, xw, GW: tl.constexpr):
    """d [BWH, BN] plus one step's products for one x row. e*/o*: (q - z) pairs of the even / odd word rows;
    xw [BWH] int32 pointers: plane 0's x at the step's word rows 2i, 2i + 1 (plane j at + j * GW / 2)."""
    HG: tl.constexpr = GW // 2
    a0 = tl.load(xw)
    a1 = tl.load(xw + HG)
    a2 = tl.load(xw + 2 * HG)
    a3 = tl.load(xw + 3 * HG)
    a4 = tl.load(xw + 4 * HG)
    a5 = tl.load(xw + 5 * HG)
    a6 = tl.load(xw + 6 * HG)
    a7 = tl.load(xw + 7 * HG)
    part = tl.inline_asm_elementwise(
        _DOT_ASM, "=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
        [e0, e1, e2, e3, o0, o1, o2, o3,
         _halves(a0, a4, False)[:, None], _halves(a1, a5, False)[:, None],
         _halves(a2, a6, False)[:, None], _halves(a3, a7, False)[:, None],
         _halves(a0, a4, True)[:, None], _halves(a1, a5, True)[:, None],
         _halves(a2, a6, True)[:, None], _halves(a3, a7, True)[:, None]],
        dtype=tl.int32, is_pure=True, pack=1)
    return d + part.to(tl.float32, bitcast=True)


@triton.jit
def _words(ptrs, mask_n, W_EVICT: tl.constexpr):
    """A tile of weight words [BWH, BN] (W_EVICT: load_meta's eviction policy)."""
    return tl.load(ptrs, mask=mask_n[None, :], other=0, eviction_policy=W_EVICT)


@triton.jit
def _bf16_pair(v):
    """[BN] values -> the bf16x2 (v, v) as int32 bits."""
    b = v.to(tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.uint32)
    return (b | (b << 16)).to(tl.int32, bitcast=True)


@triton.jit
def _int4_kmajor_gemv_bf16x2_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,
    M, N, GROUPS_PER_SPLIT, N_GROUPS,
    stride_xm, stride_qw, stride_sg, stride_zg, stride_om,
    ROWS: tl.constexpr, GW: tl.constexpr, BN: tl.constexpr, BW: tl.constexpr,
    SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False, PREFETCH: tl.constexpr = False,
    W_EVICT: tl.constexpr = "", ONE_GROUP: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    STEPS: tl.constexpr = GW // BW  # steps per group
    BWH: tl.constexpr = BW // 2  # word rows per tile: a step is an even and an odd tile
    rn = pid_n * BN + tl.arange(0, BN)  # [BN]
    mask_n = rn < N
    rh = tl.arange(0, BWH)  # [BWH]
    g_start = pid_k * GROUPS_PER_SPLIT
    g_end = tl.minimum(g_start + GROUPS_PER_SPLIT, N_GROUPS)
    w_last = g_end * GW - BW  # the split's last step (its prefetch reloads itself)
    q_ptrs = qw_ptr + (g_start * GW + 2 * rh).to(tl.int64)[:, None] * stride_qw + rn[None, :]  # [BWH, BN] even rows
    x_words = x_ptr.to(tl.pointer_type(tl.int32)) + rh  # [BWH]: x rows 2i, 2i + 1 as one int32 (bf16 pair)
    acc0 = tl.zeros((BN,), dtype=tl.float32)
    acc1 = tl.zeros((BN,), dtype=tl.float32)
    acc2 = tl.zeros((BN,), dtype=tl.float32)
    acc3 = tl.zeros((BN,), dtype=tl.float32)
    if PREFETCH:  # read-only weights before the wait (int4_kmajor_gemv.py), the first group's s / z too
        even = _words(q_ptrs, mask_n, W_EVICT)
        odd = _words(q_ptrs + stride_qw, mask_n, W_EVICT)
        s_cur, z_cur = _group_scales(s_ptr, z_ptr, g_start, stride_sg, stride_zg, rn, mask_n, W_EVICT)
    pdl_wait_and_release(PDL)
    if not PREFETCH:
        even = _words(q_ptrs, mask_n, W_EVICT)
        odd = _words(q_ptrs + stride_qw, mask_n, W_EVICT)
        s_cur, z_cur = _group_scales(s_ptr, z_ptr, g_start, stride_sg, stride_zg, rn, mask_n, W_EVICT)
    for g in range(g_start, g_end):
        # the next group's s / z in flight during this one (the last group reloads its own): a group's
        # first step needs z at once, so a load issued at its start would be a DRAM round trip per group
        s_next, z_next = _group_scales(s_ptr, z_ptr, tl.minimum(g + 1, g_end - 1), stride_sg, stride_zg, rn, mask_n,
                                       W_EVICT)
        s = s_cur.to(tl.float32)  # [BN]
        nzz = _bf16_pair(-(z_cur.to(tl.float32) + 128.0))[None, :]  # exact: z is a whole number in 0..15
        d0 = tl.zeros((BWH, BN), dtype=tl.float32)
        d1 = tl.zeros((BWH, BN), dtype=tl.float32)
        d2 = tl.zeros((BWH, BN), dtype=tl.float32)
        d3 = tl.zeros((BWH, BN), dtype=tl.float32)
        for step in tl.static_range(STEPS):
            w_cur = g * GW + step * BW
            if STEPS == 1 and ONE_GROUP:  # the split's only step: nothing to load next
                even_next = even
                odd_next = odd
            else:
                nxt = q_ptrs + (tl.minimum(w_cur + BW, w_last) - w_cur) * stride_qw  # next step in flight
                even_next = _words(nxt, mask_n, W_EVICT)
                odd_next = _words(nxt + stride_qw, mask_n, W_EVICT)
            e0, e1, e2, e3 = _dequant(even, nzz)  # once per weight pair, shared by the rows
            o0, o1, o2, o3 = _dequant(odd, nzz)
            xw = x_words + (g * (8 * GW) + step * BW) // 2  # [BWH] plane 0 of this step
            d0 = _row_step(d0, e0, e1, e2, e3, o0, o1, o2, o3, xw, GW)
            if ROWS > 1:
                d1 = _row_step(d1, e0, e1, e2, e3, o0, o1, o2, o3, xw + stride_xm // 2, GW)
            if ROWS > 2:
                d2 = _row_step(d2, e0, e1, e2, e3, o0, o1, o2, o3, xw + stride_xm, GW)
            if ROWS > 3:
                d3 = _row_step(d3, e0, e1, e2, e3, o0, o1, o2, o3, xw + 3 * (stride_xm // 2), GW)
            even = even_next
            odd = odd_next
            q_ptrs += BW * stride_qw
        acc0, acc1, acc2, acc3 = _add_group(acc0, acc1, acc2, acc3, d0, d1, d2, d3, s, ROWS)
        s_cur = s_next
        z_cur = z_next
    _finish(acc0, acc1, acc2, acc3, out_ptr, part_ptr, bias_ptr, ticket_ptr, rn, mask_n, M, N, stride_om, pid_n, pid_k,
            ROWS, BN, SPLIT, HAS_BIAS)


def usable(x2: Tensor, config: Optional[dict] = None) -> bool:
    """This kernel for the call: bf16 x on an sm_80+ GPU (compiled, not interpreted), x rows starting on
    4-byte boundaries (x is read as bf16 pairs), BW >= 2, the config not asking for packed=False and
    AUTODEPLOY_INT4_BF16X2 not 0. No config: whether the default configs (BW 4 or 8) would take it."""
    config = config or dict(bw=4)
    if x2.dtype != torch.bfloat16 or x2.device.type != "cuda" or interpreted() or not config.get("packed", True):
        return False
    if os.environ.get("AUTODEPLOY_INT4_BF16X2", "1") != "1":  # off: the fp32 kernel (an A/B in one device call)
        return False
    if config["bw"] < 2 or x2.data_ptr() % 4 or (x2.shape[0] > 1 and x2.stride(0) % 2):
        return False
    return _bf16x2_fma(x2.device.index if x2.device.index is not None else torch.cuda.current_device())


ONE_STEP_REGISTERS = 168  # 6 programs an SM (64 threads); ptxas alone takes 221 (4 an SM); 14 spills at 168


def programs_per_sm() -> int:
    """The one-row K split's target of programs an SM where the n tiles are fewer than the SMs: 8 (they fit, at
    128 registers), or AUTODEPLOY_INT4_PER_SM (fewer leave an SM room for the next kernel's programs to start,
    e.g. the decode attention's KV prefetch during qkv; not yet timed)."""
    value = os.environ.get("AUTODEPLOY_INT4_PER_SM", "8")
    if not value.isdigit() or not 1 <= int(value) <= 8:
        raise ValueError(f"AUTODEPLOY_INT4_PER_SM={value!r}: expected 1..8 programs an SM")
    return int(value)


def one_step() -> bool:
    """The one-step config for one-group splits (module docstring, "One step"): AUTODEPLOY_INT4_ONE_STEP=1."""
    return os.environ.get("AUTODEPLOY_INT4_ONE_STEP", "0") == "1"


def load_meta() -> dict:
    """W_EVICT, the eviction policy of the weight words' and their scales' loads: evict_first in L1 and L2 by
    default (read once a step, they leave L2 before anything else; 8B INT4 step on the H200 -80 us,
    BENCHMARKS.md twelfth session), AUTODEPLOY_INT4_W_LOAD=none for plain loads (A/B runs)."""
    w = os.environ.get("AUTODEPLOY_INT4_W_LOAD", "evict_first")
    if w not in ("none", "evict_first"):
        raise ValueError(f"AUTODEPLOY_INT4_W_LOAD={w!r}: expected evict_first or none")
    return dict(W_EVICT="evict_first" if w == "evict_first" else "")


@functools.lru_cache(maxsize=None)  # per launch at capture time
def _bf16x2_fma(device_index: int) -> bool:
    """fma.rn.bf16x2 needs sm_80 (PTX ISA)."""
    return torch.cuda.get_device_capability(device_index) >= (8, 0)
