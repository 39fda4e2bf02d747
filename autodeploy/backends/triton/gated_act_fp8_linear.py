"""Gated-MLP activation writing per-block amaxes beside its output, then the FP8 decode GEMV quantizing x as
it reads it: the Triton twin of autodeploy::gated_act_fp8_linear, and the unfused pairs as timed candidates
beside it.

    triton_gated_act_fp8_linear(gate [.., F], up [.., F], act, weight e4m3 [N, F], weight_scale, bias?,
                                quantize_input) -> out [.., N]

        rows <= 16, quantize_input, operands the GEMV reads:
            _gated_act_amax_kernel      program (m, b), grid (M, NB = cdiv(F, 1024)): h = act(gate) * up
                                        over row m's b-th block of 1024 columns in x's dtype, and
                                        amax [m, b] = max |h| over that block (fp32)
            fp8_gemv's GEMV, X_MODE 3   s_x[m] = max(max_b amax[m, b] / 448, 1e-12); each x tile quantized
                                        as it is read: out = (w @ e4m3(h / s_x)^T) * s_w * s_x (+ bias)
        otherwise (prefill rows, weight-only FP8, block scales, F % 64, no kernels): the activation, then
            triton_fp8_linear (the Triton kernels where they run; > 16 rows go to torch._scaled_mm there)

Why: an 8B FP8 decode step runs at each of its 32 down projections the activation kernel (gated_mlp.py,
14 programs writing bf16 [1, 14336]), fp8_gemv's per-token quantization kernel (one program reading the
row back for its amax, then writing e4m3 codes and the scale) and the GEMV. The quantization needs the
whole row's amax before its first code: that is why it is a launch of its own. Here each activation
program also writes its block's amax (14 floats a row at 8B), and the GEMV, whose programs read x
anyway, takes each row's scale from those NB floats and quantizes its own x tiles: 2 launches instead of
3, and no single-program pass over the row. (fp8_gemv's X_MODE 1, quantizing in the GEMV from x alone,
lost to the separate kernel because every program re-read the whole row for its amax: 8B down, 256
programs x 28 KB.) The price: the GEMV reads x in bf16 (twice the e4m3 bytes, from L2), and every n tile
divides its x tiles again (each element 64 times at the 8B down).

The design before this one (one program a row: activation, amax and codes in one kernel, 2 launches too)
measured no faster on the H200 than the 3 unfused kernels (8B FP8 352.3 vs 353.2 tok/s, BENCHMARKS.md
fifth session): one program streaming a 14336-wide row is slow. This design is: 8B FP8 374.0 vs 368.6
tok/s on the H200 (TPOT 2.674 vs 2.713 ms, same call; BENCHMARKS.md sixth session), so the GPU recipes
turn the fold on (without PDL its activation kernel took 2.0 us, against 1.6 + 2.0 us for the act and
quantization kernels it replaces, profiled in another call).

Numerics: h is _gated_act_kernel's (gated_mlp.gated_act_block, rounded to x's dtype at the store):
bit-identical to triton_gated_mlp_act. The max of the block amaxes is the row's amax exactly (a max
is exact in any order), the scale is _quantize_rows_kernel's expression, and the codes are
fp8_gemv.quantize_e4m3 of h / s_x, a division as that kernel does: codes, scales and out are
bit-identical to triton_gated_mlp_act followed by triton_fp8_linear (prologue kernel, then the GEMV at
the same config). (The torch reference rounds act(gate) before the product: where a bf16 element differs
from it by one ulp, as the activation kernel's may, its e4m3 code may differ by one step.)

Beside the fused twin ("triton"), select_backends times what the graph ran before the fold, as ops of
the same schema (registered below, CUDA only):

    "act+gemv"       triton_gated_mlp_act, then triton_fp8_linear (quantization kernel + GEMV)
    "act+scaled_mm"  triton_gated_mlp_act, then autodeploy::fp8_linear (torch._scaled_mm on Hopper)

so the fold is kept only where it was timed faster; --no-autotune takes the fused twin.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

import autodeploy.backends.torch.gated_act_fp8_linear  # noqa: F401  (the canonical op the fakes call)
from autodeploy.backends.triton import fp8_gemv, gated_mlp
from autodeploy.backends.triton._common import on_cuda, pdl_enabled, pdl_launch, pdl_wait_and_release, rows_of
from autodeploy.backends.triton.gated_mlp import gated_act_block
from autodeploy.profiler.candidates import register_backend


@triton.jit
def _gated_act_amax_kernel(
    gate_ptr, up_ptr, out_ptr, amax_ptr, stride_gate, stride_up, f,
    ACT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    """Program (m, b): out[m, cols] = act(gate[m, cols]) * up[m, cols] in out's dtype (contiguous [M, f]),
    cols the b-th BLOCK; amax[m, b] = max |out[m, cols]| in fp32 (amax [M, NB], NB the grid's 2nd dim)."""
    pdl_wait_and_release(PDL)  # between the gate_up GEMV and the down GEMV of a decode step
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < f
    y = gated_act_block(gate_ptr + row * stride_gate, up_ptr + row * stride_up, cols, mask, ACT)
    y = y.to(out_ptr.dtype.element_ty)  # the rounding _gated_act_kernel's store makes
    tl.store(out_ptr + row * f + cols, y, mask=mask)
    # the amax of the stored (rounded) values, as the prologue kernel reads them back; 0 past f (act(0) * 0)
    tl.store(amax_ptr + row * tl.num_programs(1) + blk, tl.max(tl.abs(y.to(tl.float32)), axis=0))


def unsupported_reason(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor,
                       bias: Optional[Tensor] = None) -> Optional[str]:
    """None when the two kernels take this call (rows <= 16 included), else why not."""
    return fp8_gemv.unsupported_reason(gate, weight, weight_scale, bias) or gated_mlp.unsupported_reason(gate, up, act)


def supports(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
             quantize_input: bool = True) -> bool:
    """Can the fused kernels read these operands (at decode rows; more rows take the unfused path)?"""
    return (bool(quantize_input) and fp8_gemv.operand_problem(gate, weight, weight_scale, bias) is None
            and gated_mlp.unsupported_reason(gate, up, act) is None)


def gated_act_block_amax(gate2: Tensor, up2: Tensor, act: str, block: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """gate2, up2 [M, F] (unit stride on F, any row stride) -> (h = act(gate) * up [M, F] in gate's dtype,
    fp32 [M, NB]: max |h| over each block of `block` columns, NB = cdiv(F, block), the last block partial).
    block: default gated_mlp's (the programs of triton_gated_mlp_act); tests pass less for more blocks."""
    m, f = gate2.shape
    block = block or gated_mlp.act_block(max(f, 1))
    nb = triton.cdiv(f, block)
    h = torch.empty(m, f, dtype=gate2.dtype, device=gate2.device)  # [M, F]
    block_amax = torch.empty(m, nb, dtype=torch.float32, device=gate2.device)  # [M, NB]
    if m and f:
        _gated_act_amax_kernel[(m, nb)](
            gate2, up2, h, block_amax, gate2.stride(0), up2.stride(0), f,
            ACT=gated_mlp.ACTIVATIONS[act], BLOCK=block, PDL=pdl_enabled(gate2.device), num_warps=4,
            **pdl_launch(gate2.device),
        )
    return h, block_amax


def launch(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
           config: Optional[dict] = None) -> Tensor:
    """out [.., N] on the two kernels; raises NotImplementedError when they cannot.
    config: fp8_gemv's GEMV config (None: its launch_config)."""
    why = unsupported_reason(gate, up, act, weight, weight_scale, bias)
    if why:
        raise NotImplementedError(f"triton gated_act_fp8_linear: {why}")
    gate2, up2 = rows_of(gate), rows_of(up)  # [M, F] each; the split's strided views, no copy
    h, block_amax = gated_act_block_amax(gate2, up2, act)  # [M, F] in gate's dtype, [M, NB] fp32
    out = fp8_gemv.launch_block_scaled(h, block_amax, weight, weight_scale, bias, gate.dtype, config)  # [M, N]
    return out.reshape(*gate.shape[:-1], weight.shape[0])


def gated_act(gate: Tensor, up: Tensor, act: str) -> Tensor:
    """act(gate) * up [.., F]: the Triton activation kernel where it runs, else the reference."""
    if gated_mlp.supports(gate, up, act):
        return gated_mlp.launch(gate, up, act)
    return torch.ops.autodeploy.gated_mlp_act(gate, up, act)


# [.., F] -> [.., N]: the FP8 projection after the activation in the unfused forms
Project = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], bool], Tensor]


def _unfused(project: Project, gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor,
             bias: Optional[Tensor], quantize_input: bool) -> Tensor:
    return project(gated_act(gate, up, act), weight, weight_scale, bias, quantize_input)


@torch.library.custom_op("autodeploy::triton_gated_act_fp8_linear", mutates_args=())
def triton_gated_act_fp8_linear(
    gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
    quantize_input: bool = True,
) -> Tensor:
    """-> fp8_linear(act(gate) * up) [.., N]; 2 launches up to 16 rows."""
    if not quantize_input or unsupported_reason(gate, up, act, weight, weight_scale, bias):
        return _unfused(torch.ops.autodeploy.triton_fp8_linear, gate, up, act, weight, weight_scale, bias,
                        quantize_input)
    return launch(gate, up, act, weight, weight_scale, bias)


@triton_gated_act_fp8_linear.register_fake
def _(gate, up, act, weight, weight_scale, bias=None, quantize_input=True):
    return torch.ops.autodeploy.gated_act_fp8_linear(gate, up, act, weight, weight_scale, bias, quantize_input)


# ---- the unfused pairs, as candidates of the same schema -----------------------------------------

def _act_then(name: str, project: Project):
    """autodeploy::<name>: the activation kernel, then `project`; the schema of autodeploy::gated_act_fp8_linear."""

    def impl(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
             quantize_input: bool = True) -> Tensor:
        return _unfused(project, gate, up, act, weight, weight_scale, bias, quantize_input)

    op = torch.library.custom_op(f"autodeploy::{name}", impl, mutates_args=())
    op.register_fake(lambda *a, **kw: torch.ops.autodeploy.gated_act_fp8_linear(*a, **kw))
    return getattr(torch.ops.autodeploy, name).default


ACT_FP8_GEMV = _act_then("triton_act_fp8_gemv_linear", torch.ops.autodeploy.triton_fp8_linear)
ACT_SCALED_MM = _act_then("triton_act_scaled_mm_fp8_linear", torch.ops.autodeploy.fp8_linear)

register_backend("gated_act_fp8_linear", "act+gemv", ACT_FP8_GEMV, supports=on_cuda, pdl=True)
register_backend("gated_act_fp8_linear", "act+scaled_mm", ACT_SCALED_MM, supports=on_cuda)
