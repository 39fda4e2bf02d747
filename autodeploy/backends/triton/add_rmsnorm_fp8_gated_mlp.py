"""A whole FP8 gated MLP at decode rows in 3 launches: the Triton twin of autodeploy::add_rmsnorm_fp8_gated_mlp,
and the 4-launch path it replaces as a timed candidate beside it.

    triton_add_rmsnorm_fp8_gated_mlp(x, residual, norm_weight, eps, add_unit_offset,
                                     weight_gate_up e4m3 [2F, K], scale_gate_up, bias_gate_up?, quantize_gate_up,
                                     act, weight_down e4m3 [N, F], scale_down, bias_down?, quantize_down)
        -> (out [.., N], x + residual [.., K])

        rows <= 16, both quantize flags, operands the kernels read:
            _add_rmsnorm_quantize_kernel   new residual [M, K], e4m3 x_q [M, K], s_x [M] (add_rmsnorm_fp8_linear.py)
            _gated_fp8_gemv_kernel         program j, grid NB = cdiv(F, BN): the gate rows j*BN.. and the up rows
                                           F + j*BN.. of the weight, h = act(gate) * up [M, BN] in x's dtype,
                                           amax [m, j] = max |h[m, cols of j]| (fp32 [M, NB])
            fp8_gemv's GEMV, X_MODE 3      the down projection, quantizing h as it reads it (launch_block_scaled)
        otherwise (prefill rows, weight-only FP8, block scales, K or F % 64, no kernels): the two folds'
            twins, triton_add_rmsnorm_fp8_linear, the split, triton_gated_act_fp8_linear (their own fallbacks)

Why: the 4-launch MLP of an 8B FP8 decode step (norm + quantize, gate_up GEMV, act + block amaxes, down GEMV)
spends ~2 us x 32 layers on the activation kernel, which reads back the [M, 2F] the GEMV just wrote and
writes h. The gate_up GEMV already holds gate and up of its columns in registers at its epilogue: here it
applies the activation there, writes h [M, F] (half the bytes of gate_up) and one amax per row and program,
which is all the down GEMV's X_MODE 3 needs. (NB = F / BN amaxes a row: 448 at 8B with BN 32, 1.8 KB a row
each down program reads from L2 instead of 14 floats.)

The kernel: a program owns BN output columns, i.e. 2 BN weight rows, no K split. By default (interleave) it
loads them as one [2 BN, BK] tile, row 2j the gate row of column j and row 2j + 1 its up row, and runs one
tl.dot a K step: with BN 32 that is the plain gate_up GEMV's [64, BK] x [BK, 16] dot, the same MMA shape
and K order (BK 256, the plain GEMV's at 8B), so every fp32 accumulator is the plain GEMV's bit for bit
(fp8 MMA accumulation is not IEEE, so the instruction matters: compiled for sm_90, the plain
GEMV and this tile both run wgmma m64n16k32 e4m3 (triton 3.6 and 3.9), while two [32, BK] dots fall back to mma.sync m16n8k16 on
operands converted to fp16). interleave False: two [BN, BK] loads and two dots (for the benchmark; at BN 64
they are wgmma again). The epilogue is the plain GEMV's,
in its order (acc * s_w, * s_x, + bias, rounded to x's dtype as that GEMV stores gate_up), then
gated_mlp.activate on the rounded gate times the rounded up in fp32, rounded once at the store: h is
_gated_act_amax_kernel's h bit for bit, and the max of the block amaxes is the row's amax exactly, so the
down GEMV's codes and out are those of the 4-launch path (at 8B, where the plain gate_up GEMV is unsplit
with BK 256; where its default config splits K, h may differ from it in the fp32 summation order).

Beside the twin ("triton"), select_backends times the path before the fold, as an op of the same schema
(registered below, CUDA only):

    "norm_gemv+act_gemv"  triton_add_rmsnorm_fp8_linear, split, triton_gated_act_fp8_linear (4 launches)

so the fold is kept only where it was timed faster; --no-autotune takes the twin.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

import autodeploy.backends.torch.add_rmsnorm_fp8_gated_mlp  # noqa: F401  (the canonical op the fakes call)
from autodeploy.backends.triton import add_rmsnorm_fp8_linear as norm_fp8
from autodeploy.backends.triton import fp8_gemv, gated_mlp
from autodeploy.backends.triton._common import (on_cuda, pdl_enabled, pdl_launch, pdl_prefetch_meta,
                                                pdl_wait_and_release, prefetch_rows, rows_of)
from autodeploy.backends.triton.fp8_gemv import _FP8_DOT_BROKEN  # shared: one failed fp8 tl.dot says it for both
from autodeploy.backends.triton.gated_mlp import activate
from autodeploy.backends.triton.linear import split_k
from autodeploy.profiler.candidates import register_backend

# BN 32 output columns = 64 weight rows a program: the plain gate_up GEMV's tile (BN 64) at 8B, the same bytes
# a K step; BK 256, 4 stages: that GEMV's config for wide weights (fp8_gemv.launch_config)
CONFIG = dict(bn=32, bk=256, num_warps=4, num_stages=4, interleave=True, fp8_dot=True)


@triton.jit
def _epilogue(acc, ws, x_scale, bias, HAS_BIAS: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """acc [R, BM] fp32, ws [R] (or a scalar), x_scale [BM], bias [R] -> [BM, R] fp32 of values in OUT_DTYPE:
    _fp8_gemv_kernel's epilogue and store_or_merge's bias add, in their order, then its store's rounding."""
    acc *= ws
    out = tl.trans(acc)  # [BM, R]
    out *= x_scale[:, None]
    if HAS_BIAS:
        out += bias[None, :]
    return out.to(OUT_DTYPE).to(tl.float32)


@triton.jit(do_not_specialize=["M"])  # M = 1 would otherwise compile its own copy
def _gated_fp8_gemv_kernel(
    xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, h_ptr, amax_ptr,
    M, F, K, stride_wn,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, INTERLEAVE: tl.constexpr,
    FP8_DOT: tl.constexpr, PER_TENSOR: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False,
    PF_LINES: tl.constexpr = 0, PF_STEP: tl.constexpr = 128,
):
    """Program j: h[m, c] = act(gate[m, c]) * up[m, c] for its BN columns c (gate = row c of the [2F, K] weight
    times x, up = row F + c), in h's dtype; amax[m, j] = max_c |h[m, c]| (0 past F), amax [M, NB]."""
    pid = tl.program_id(0)
    rm = tl.arange(0, BM)
    rk = tl.arange(0, BK)
    mask_m = rm < M
    if INTERLEAVE:  # one [2 BN, BK] tile: row 2j gate column j, row 2j + 1 its up
        rr = tl.arange(0, 2 * BN)
        col = pid * BN + rr // 2  # [2 BN] output column of each tile row
        mask_r = col < F
        rows = tl.minimum(col, F - 1) + (rr % 2) * F  # weight rows (clamped: the prefetch reads valid rows)
        if PF_LINES > 0:  # weights only, before the wait (_common.py: weight prefetch)
            prefetch_rows(w_ptr + rows.to(tl.int64) * stride_wn, PF_LINES, PF_STEP)
    else:  # two [BN, BK] tiles
        cn = pid * BN + tl.arange(0, BN)
        mask_c = cn < F
        g_rows = tl.minimum(cn, F - 1)
        if PF_LINES > 0:
            prefetch_rows(w_ptr + g_rows.to(tl.int64) * stride_wn, PF_LINES, PF_STEP)
            prefetch_rows(w_ptr + (g_rows + F).to(tl.int64) * stride_wn, PF_LINES, PF_STEP)
    pdl_wait_and_release(PDL)  # between the norm + quantize kernel and the down GEMV
    x_scale = tl.load(xs_ptr + rm, mask=mask_m, other=1.0)  # [BM] from the norm kernel
    x_ptrs = xq_ptr + rm[:, None] * K + rk[None, :]  # [BM, BK] e4m3, contiguous rows

    if INTERLEAVE:
        w_ptrs = w_ptr + rows.to(tl.int64)[:, None] * stride_wn + rk[None, :]  # [2 BN, BK]
        acc = tl.zeros((2 * BN, BM), dtype=tl.float32)
        for _ in range(0, K, BK):
            w = tl.load(w_ptrs, mask=mask_r[:, None], other=0.0)  # [2 BN, BK] e4m3: the bytes that matter
            xk = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)  # [BM, BK]: a few KB, cached
            if FP8_DOT:
                acc += tl.dot(w, tl.trans(xk))
            else:  # e4m3 -> fp16 is exact on both operands
                acc += tl.dot(w.to(tl.float16), tl.trans(xk.to(tl.float16)))
            w_ptrs += BK
            x_ptrs += BK
        if PER_TENSOR:
            ws = tl.load(ws_ptr).to(tl.float32)
        else:
            ws = tl.load(ws_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)[:, None]
        bias = tl.load(bias_ptr + rows, mask=mask_r, other=0.0).to(tl.float32) if HAS_BIAS else x_scale
        y = _epilogue(acc, ws, x_scale, bias, HAS_BIAS, h_ptr.dtype.element_ty)  # [BM, 2 BN]
        g, u = tl.split(tl.reshape(y, (BM, BN, 2)))  # [BM, BN] each: the even (gate) and odd (up) columns
        cols = pid * BN + tl.arange(0, BN)
        mask_n = cols < F
    else:
        g_ptrs = w_ptr + g_rows.to(tl.int64)[:, None] * stride_wn + rk[None, :]  # [BN, BK]
        u_ptrs = g_ptrs + F * stride_wn
        acc_g = tl.zeros((BN, BM), dtype=tl.float32)
        acc_u = tl.zeros((BN, BM), dtype=tl.float32)
        for _ in range(0, K, BK):
            wg = tl.load(g_ptrs, mask=mask_c[:, None], other=0.0)  # [BN, BK]
            wu = tl.load(u_ptrs, mask=mask_c[:, None], other=0.0)  # [BN, BK]
            xk = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)  # [BM, BK]
            if FP8_DOT:
                acc_g += tl.dot(wg, tl.trans(xk))
                acc_u += tl.dot(wu, tl.trans(xk))
            else:
                acc_g += tl.dot(wg.to(tl.float16), tl.trans(xk.to(tl.float16)))
                acc_u += tl.dot(wu.to(tl.float16), tl.trans(xk.to(tl.float16)))
            g_ptrs += BK
            u_ptrs += BK
            x_ptrs += BK
        if PER_TENSOR:
            ws_g = tl.load(ws_ptr).to(tl.float32)
            ws_u = ws_g
        else:
            ws_g = tl.load(ws_ptr + g_rows, mask=mask_c, other=0.0).to(tl.float32)[:, None]
            ws_u = tl.load(ws_ptr + g_rows + F, mask=mask_c, other=0.0).to(tl.float32)[:, None]
        b_g = tl.load(bias_ptr + g_rows, mask=mask_c, other=0.0).to(tl.float32) if HAS_BIAS else x_scale
        b_u = tl.load(bias_ptr + g_rows + F, mask=mask_c, other=0.0).to(tl.float32) if HAS_BIAS else x_scale
        g = _epilogue(acc_g, ws_g, x_scale, b_g, HAS_BIAS, h_ptr.dtype.element_ty)  # [BM, BN]
        u = _epilogue(acc_u, ws_u, x_scale, b_u, HAS_BIAS, h_ptr.dtype.element_ty)  # [BM, BN]
        cols = cn
        mask_n = mask_c

    # gated_mlp.gated_act_block's math on the values the plain GEMV stores, rounded once (its activation kernel)
    h = (activate(g, ACT) * u).to(h_ptr.dtype.element_ty)  # [BM, BN]
    mask_o = mask_m[:, None] & mask_n[None, :]
    tl.store(h_ptr + rm[:, None] * F + cols[None, :], h, mask=mask_o)
    amax = tl.max(tl.where(mask_o, tl.abs(h.to(tl.float32)), 0.0), axis=1)  # [BM]: of the stored values
    tl.store(amax_ptr + rm * tl.num_programs(0) + pid, amax, mask=mask_m)


def gated_config(config: Optional[dict], k: int) -> dict:
    """CONFIG with `config`'s keys over it, BK the largest power of two <= its bk dividing K."""
    cfg = dict(CONFIG, **(config or {}))
    cfg["bk"] = split_k(k, cfg["bk"], 1)[0]
    return cfg


def gated_gemv(xq: Tensor, xs: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor], act: str,
               out_dtype: torch.dtype, config: Optional[dict] = None) -> tuple[Tensor, Tensor]:
    """xq e4m3 [M, K] (contiguous), xs fp32 [M], weight e4m3 [2F, K] (gate rows, then up rows), its scale ([2F] |
    [2F, 1] | []), bias [2F]? -> (h = act(gate) * up [M, F] in out_dtype, fp32 [M, NB] amaxes of h over each
    program's BN columns, NB = cdiv(F, BN)). The caller has checked the operands (unsupported_reason)."""
    m, k = xq.shape
    f = weight.shape[0] // 2
    cfg = gated_config(config, k)
    nb = triton.cdiv(f, cfg["bn"])
    device = xq.device
    h = torch.empty(m, f, dtype=out_dtype, device=device)  # [M, F]
    amax = torch.empty(m, nb, dtype=torch.float32, device=device)  # [M, NB]
    if m == 0 or f == 0:
        return h, amax
    weight_scale = weight_scale if weight_scale.is_contiguous() else weight_scale.contiguous()
    explicit = config is not None and "fp8_dot" in config
    fp8_dot = cfg["fp8_dot"] and not (_FP8_DOT_BROKEN and not explicit)
    args = (xq, xs, weight, weight_scale, bias if bias is not None else weight_scale, h, amax, m, f, k, weight.stride(0))
    meta = dict(BM=16, BN=cfg["bn"], BK=cfg["bk"], ACT=gated_mlp.ACTIVATIONS[act], INTERLEAVE=bool(cfg["interleave"]),
                PER_TENSOR=weight_scale.numel() == 1, HAS_BIAS=bias is not None, PDL=pdl_enabled(device),
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_launch(device),
                **pdl_prefetch_meta(device, cfg["bk"], weight.element_size()))
    try:
        _gated_fp8_gemv_kernel[(nb,)](*args, FP8_DOT=fp8_dot, **meta)
    except Exception as e:  # noqa: BLE001  (compile errors surface at the first launch)
        if not fp8_dot or explicit:
            raise
        _FP8_DOT_BROKEN.append(f"{type(e).__name__}: {str(e)[:200]}")  # fp16 products from now on (fp8_gemv too)
        _gated_fp8_gemv_kernel[(nb,)](*args, FP8_DOT=False, **meta)
    return h, amax


def _down_input(x: Tensor, f: int) -> Tensor:
    """A [.., F] stand-in for h (x's rows, dtype and device; a stride-0 view, no memory) to check the down operands."""
    return x[..., :1].expand(*x.shape[:-1], f)


def unsupported_reason(x: Tensor, residual: Tensor, norm_weight: Tensor, weight_gate_up: Tensor, scale_gate_up: Tensor,
                       bias_gate_up: Optional[Tensor], act: str, weight_down: Tensor, scale_down: Tensor,
                       bias_down: Optional[Tensor] = None) -> Optional[str]:
    """None when the three kernels take this call (rows <= 16 included), else why not."""
    why = norm_fp8.unsupported_reason(x, residual, norm_weight, weight_gate_up, scale_gate_up, bias_gate_up)
    if why:
        return f"gate_up: {why}"
    if weight_gate_up.shape[0] % 2:
        return f"gate_up has an odd number of rows ({weight_gate_up.shape[0]})"
    if act not in gated_mlp.ACTIVATIONS:
        return f"activation {act!r} is not one of {sorted(gated_mlp.ACTIVATIONS)}"
    why = fp8_gemv.unsupported_reason(_down_input(x, weight_gate_up.shape[0] // 2), weight_down, scale_down, bias_down)
    return f"down: {why}" if why else None


def supports(x: Tensor, residual: Tensor, norm_weight: Tensor, weight_gate_up: Tensor, scale_gate_up: Tensor,
             bias_gate_up: Optional[Tensor], quantize_gate_up: bool, act: str, weight_down: Tensor, scale_down: Tensor,
             bias_down: Optional[Tensor] = None, quantize_down: bool = True) -> bool:
    """Can the three kernels read these operands (at decode rows; more rows take the two folds' twins)?"""
    if not (quantize_gate_up and quantize_down) or weight_gate_up.shape[0] % 2 or act not in gated_mlp.ACTIVATIONS:
        return False
    if not norm_fp8.supports(x, residual, norm_weight, weight_gate_up, scale_gate_up, bias_gate_up, True):
        return False
    return fp8_gemv.operand_problem(_down_input(x, weight_gate_up.shape[0] // 2), weight_down, scale_down,
                                    bias_down) is None


def launch(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool, weight_gate_up: Tensor,
           scale_gate_up: Tensor, bias_gate_up: Optional[Tensor], act: str, weight_down: Tensor, scale_down: Tensor,
           bias_down: Optional[Tensor] = None, config: Optional[dict] = None,
           down_config: Optional[dict] = None) -> tuple[Tensor, Tensor]:
    """(out [.., N], x + residual [.., K]) on the three kernels; raises NotImplementedError when they cannot.
    config: the gated GEMV's (CONFIG's keys); down_config: fp8_gemv's (None: its launch_config)."""
    why = unsupported_reason(x, residual, norm_weight, weight_gate_up, scale_gate_up, bias_gate_up, act, weight_down,
                             scale_down, bias_down)
    if why:
        raise NotImplementedError(f"triton add_rmsnorm_fp8_gated_mlp: {why}")
    x2, res2 = rows_of(x), rows_of(residual)  # [M, K] each
    xq, xs, new_res = norm_fp8.add_rmsnorm_quantize(x2, res2, norm_weight, eps, add_unit_offset)
    h, amax = gated_gemv(xq, xs, weight_gate_up, scale_gate_up, bias_gate_up, act, x.dtype, config)  # [M, F], [M, NB]
    out = fp8_gemv.launch_block_scaled(h, amax, weight_down, scale_down, bias_down, x.dtype, down_config)  # [M, N]
    return out.reshape(*x.shape[:-1], weight_down.shape[0]), new_res.reshape(x.shape)


def _two_folds(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
               weight_gate_up: Tensor, scale_gate_up: Tensor, bias_gate_up: Optional[Tensor], quantize_gate_up: bool,
               act: str, weight_down: Tensor, scale_down: Tensor, bias_down: Optional[Tensor] = None,
               quantize_down: bool = True) -> tuple[Tensor, Tensor]:
    """The graph before the fold, on the two folds' twins (4 launches at decode rows; their fallbacks above)."""
    gate_up, new_residual = torch.ops.autodeploy.triton_add_rmsnorm_fp8_linear(
        x, residual, norm_weight, eps, add_unit_offset, weight_gate_up, scale_gate_up, bias_gate_up, quantize_gate_up)
    f = weight_gate_up.shape[0] // 2
    gate, up = gate_up.split([f, f], -1)  # [.., F] views each
    out = torch.ops.autodeploy.triton_gated_act_fp8_linear(gate, up, act, weight_down, scale_down, bias_down,
                                                           quantize_down)
    return out, new_residual


@torch.library.custom_op("autodeploy::triton_add_rmsnorm_fp8_gated_mlp", mutates_args=())
def triton_add_rmsnorm_fp8_gated_mlp(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight_gate_up: Tensor, scale_gate_up: Tensor, bias_gate_up: Optional[Tensor], quantize_gate_up: bool,
    act: str, weight_down: Tensor, scale_down: Tensor, bias_down: Optional[Tensor] = None, quantize_down: bool = True,
) -> tuple[Tensor, Tensor]:
    """-> (down(act(gate) * up) [.., N], x + residual [.., K]); 3 launches up to 16 rows."""
    if not (quantize_gate_up and quantize_down) or unsupported_reason(
            x, residual, norm_weight, weight_gate_up, scale_gate_up, bias_gate_up, act, weight_down, scale_down,
            bias_down):
        return _two_folds(x, residual, norm_weight, eps, add_unit_offset, weight_gate_up, scale_gate_up, bias_gate_up,
                          quantize_gate_up, act, weight_down, scale_down, bias_down, quantize_down)
    return launch(x, residual, norm_weight, eps, add_unit_offset, weight_gate_up, scale_gate_up, bias_gate_up, act,
                  weight_down, scale_down, bias_down)


@triton_add_rmsnorm_fp8_gated_mlp.register_fake
def _(*args, **kwargs):
    return torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp(*args, **kwargs)


# ---- the path before the fold, as a candidate of the same schema ------------------------------------

def _register_two_folds():
    name = "triton_norm_gemv_act_gemv_gated_mlp"
    op = torch.library.custom_op(f"autodeploy::{name}", _two_folds, mutates_args=())
    op.register_fake(lambda *a, **kw: torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp(*a, **kw))
    return getattr(torch.ops.autodeploy, name).default


TWO_FOLDS = _register_two_folds()

register_backend("add_rmsnorm_fp8_gated_mlp", "norm_gemv+act_gemv", TWO_FOLDS, supports=on_cuda, pdl=True)
