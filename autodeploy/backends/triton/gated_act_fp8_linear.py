"""Gated-MLP activation + per-token e4m3 quantization in one kernel, then the FP8 decode GEMV: the Triton twin of
autodeploy::gated_act_fp8_linear, and the unfused pairs as timed candidates beside it.

    triton_gated_act_fp8_linear(gate [.., F], up [.., F], act, weight e4m3 [N, F], weight_scale, bias?,
                                quantize_input) -> out [.., N]

        rows <= 16, quantize_input, operands the GEMV reads:
            _gated_act_quantize_kernel   program m: act(gate[m]) * up[m] in x's dtype, as e4m3 codes
                                         x_q [m, F] and its scale s_x [m] (fp32)
            fp8_gemv's GEMV, X_MODE 2    out = (w @ x_q^T) * s_w * s_x (+ bias)
        otherwise (prefill rows, weight-only FP8, block scales, F % 64, no kernels): the activation, then
            triton_fp8_linear (the Triton kernels where they run; > 16 rows go to torch._scaled_mm there)

Why: an 8B FP8 decode step ran at each of its 32 down projections the activation kernel
(gated_mlp.py, writing bf16 [1, 14336]), fp8_gemv's per-token quantization kernel (reading it back) and
the GEMV (estimated, not yet measured: ~2-4 us of fill and drain a launch, 32 of them ~0.1 ms of a ~2.8 ms
H100 step). The
activation is elementwise, so one program per row can produce the whole row, which is all the
quantization needs (the row's amax, then one division per element): 2 launches after the gate_up GEMV
instead of 3, and the bf16 activation is neither written nor read back.

One program per row (at decode that is one program: the 8B row, 14336 wide, is read as one 16384-wide
block of 16 warps, 32 elements a thread, held in registers between the amax and the quantization).
Rows wider than MAX_BLOCK are read in blocks: the first kept, the others computed again for the codes
(the same bits: the same loads and math), as _quantize_rows_kernel reads its row twice.

Numerics: act(gate) * up in fp32 with gated_mlp.activate, rounded to x's dtype as _gated_act_kernel
stores it, then quantized with _quantize_rows_kernel's amax, scale and fp8_gemv.quantize_e4m3: x_q and s_x
are bit-identical to triton_gated_mlp_act followed by fp8_gemv's quantization kernel, and so is out to
that pair's GEMV. (The torch reference rounds act(gate) before the product: where a bf16 element differs
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
from autodeploy.backends.triton._common import (interpreted, on_cuda, pdl_enabled, pdl_launch, pdl_wait_and_release,
                                                rows_of)
from autodeploy.backends.triton.fp8_gemv import FP8_MAX, MIN_SCALE, quantize_e4m3
from autodeploy.backends.triton.gated_mlp import activate
from autodeploy.profiler.candidates import register_backend
from autodeploy.quantization import fp8 as fp8_q

MAX_BLOCK = 16384  # elements of a row held at once: all of an 8B's F = 14336 (Llama-3 70B's 28672: two blocks)


@triton.jit
def _act_block(gate_row, up_row, cols, f, ACT: tl.constexpr):
    """act(gate) * up at cols (0 at cols >= f) in fp32, rounded through gate's dtype as _gated_act_kernel
    stores it and the quantization kernel reads it back."""
    mask = cols < f
    g = tl.load(gate_row + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_row + cols, mask=mask, other=0.0).to(tl.float32)
    return (activate(g, ACT) * u).to(gate_row.dtype.element_ty).to(tl.float32)  # act(0) * 0 = 0 past f


@triton.jit
def _gated_act_quantize_kernel(
    gate_ptr, up_ptr, xq_ptr, xs_ptr, stride_gate, stride_up, f,
    ACT: tl.constexpr, BLOCK: tl.constexpr, EXACT: tl.constexpr, PDL: tl.constexpr = False,
):
    """Program m: y = act(gate[m]) * up[m] in x's dtype; xs[m] = max(amax |y| / 448, 1e-12); xq[m] = e4m3(y / xs[m])."""
    pdl_wait_and_release(PDL)  # between the gate_up GEMV and the down GEMV of a decode step
    m = tl.program_id(0).to(tl.int64)
    gate_row = gate_ptr + m * stride_gate
    up_row = up_ptr + m * stride_up
    cols = tl.arange(0, BLOCK)
    y = _act_block(gate_row, up_row, cols, f, ACT)  # [BLOCK]: the whole row up to MAX_BLOCK
    amax = tl.max(tl.abs(y), axis=0)
    for k0 in range(BLOCK, f, BLOCK):  # wider rows: the rest of the row, for its amax only
        amax = tl.maximum(amax, tl.max(tl.abs(_act_block(gate_row, up_row, k0 + cols, f, ACT)), axis=0))
    scale = tl.maximum(amax / FP8_MAX, MIN_SCALE)
    tl.store(xq_ptr + m * f + cols, quantize_e4m3(y, scale, EXACT), mask=cols < f)
    for k0 in range(BLOCK, f, BLOCK):  # computed again from L1 / L2: the same bits as for the amax
        yk = _act_block(gate_row, up_row, k0 + cols, f, ACT)
        tl.store(xq_ptr + m * f + k0 + cols, quantize_e4m3(yk, scale, EXACT), mask=k0 + cols < f)
    tl.store(xs_ptr + m, scale)


def _num_warps(block: int) -> int:
    # 32 elements a thread at most: F = 14336 (block 16384) -> 16 warps; 1B's 8192 -> 8
    return max(4, min(16, block // 1024))


def unsupported_reason(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor,
                       bias: Optional[Tensor] = None) -> Optional[str]:
    """None when the two kernels take this call (rows <= 16 included), else why not."""
    return fp8_gemv.unsupported_reason(gate, weight, weight_scale, bias) or gated_mlp.unsupported_reason(gate, up, act)


def supports(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
             quantize_input: bool = True) -> bool:
    """Can the fused kernels read these operands (at decode rows; more rows take the unfused path)?"""
    return (bool(quantize_input) and fp8_gemv.operand_problem(gate, weight, weight_scale, bias) is None
            and gated_mlp.unsupported_reason(gate, up, act) is None)


def gated_act_quantize(gate2: Tensor, up2: Tensor, act: str, block: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """gate2, up2 [M, F] (unit stride on F, any row stride) -> (x_q e4m3 [M, F], s_x fp32 [M]) of act(gate) * up.
    block: elements read at once (default: the row up to MAX_BLOCK; tests pass less to read it in blocks)."""
    m, f = gate2.shape
    device = gate2.device
    xq = torch.empty(m, f, dtype=fp8_q.DTYPE, device=device)  # [M, F]
    xs = torch.empty(m, dtype=torch.float32, device=device)  # [M]
    if m and f:
        block = block or min(triton.next_power_of_2(f), MAX_BLOCK)
        _gated_act_quantize_kernel[(m,)](
            gate2, up2, xq, xs, gate2.stride(0), up2.stride(0), f,
            ACT=gated_mlp.ACTIVATIONS[act], BLOCK=block, EXACT=interpreted(), PDL=pdl_enabled(device),
            num_warps=_num_warps(block), **pdl_launch(device),
        )
    return xq, xs


def launch(gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
           config: Optional[dict] = None) -> Tensor:
    """out [.., N] on the two kernels; raises NotImplementedError when they cannot.
    config: fp8_gemv's GEMV config (None: its launch_config)."""
    why = unsupported_reason(gate, up, act, weight, weight_scale, bias)
    if why:
        raise NotImplementedError(f"triton gated_act_fp8_linear: {why}")
    gate2, up2 = rows_of(gate), rows_of(up)  # [M, F] each; the split's strided views, no copy
    xq, xs = gated_act_quantize(gate2, up2, act)
    out = fp8_gemv.launch_quantized(xq, xs, weight, weight_scale, bias, gate.dtype, config)  # [M, N]
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

register_backend("gated_act_fp8_linear", "act+gemv", ACT_FP8_GEMV, supports=on_cuda)
register_backend("gated_act_fp8_linear", "act+scaled_mm", ACT_SCALED_MM, supports=on_cuda)
