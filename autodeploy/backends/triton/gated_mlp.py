"""Gated-MLP activation act(gate) * up: `autodeploy::triton_gated_mlp_act` and `..._fused`.

    triton_gated_mlp_act(gate [..., f], up [..., f], act) -> [..., f]   (schema of autodeploy::gated_mlp_act)
    triton_fused_gated_mlp_act(gate_up [..., 2f], act)   -> [..., f]   (gate first half, up second:
                                                                        one GEMM's output for both)

act: "silu" (Llama, Qwen, Mistral), "gelu_tanh" (Gemma), "gelu" (erf form). fp32 math with one
rounding at the store (eager `act(gate) * up` also rounds the activation: one ulp apart at most). The
fused input is read through two strided views of the same rows: no copy splits it.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import (pdl_enabled, pdl_launch, pdl_wait_and_release, rows_of,
                                                unsupported_device_or_dtype)

ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}


@triton.jit
def activate(g, ACT: tl.constexpr):
    """act(g) in fp32 for ACT = ACTIVATIONS[name]; shared with gated_linear.py's GEMV epilogue."""
    if ACT == 0:
        a = g * tl.sigmoid(g)
    elif ACT == 1:
        # tanh(z) = 2 sigmoid(2z) - 1: exact identity, avoids libdevice tanh (not in every Triton)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = g * tl.sigmoid(2.0 * z)  # = 0.5 g (1 + tanh(z))
    else:
        a = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    return a


@triton.jit
def gated_act_block(gate_row, up_row, cols, mask, ACT: tl.constexpr):
    """act(gate) * up at cols of one row in fp32, before the one rounding at the store (0 where masked:
    act(0) * 0); shared with gated_act_fp8_linear.py's activation kernel, whose rows are these bits."""
    g = tl.load(gate_row + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_row + cols, mask=mask, other=0.0).to(tl.float32)
    return activate(g, ACT) * u


@triton.jit
def _gated_act_kernel(
    gate_ptr, up_ptr, out_ptr, stride_gate, stride_up, stride_out, f,
    ACT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_wait_and_release(PDL)  # between the FP8 / int4 gate_up GEMV and the down GEMV of a decode step
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < f
    y = gated_act_block(gate_ptr + row * stride_gate, up_ptr + row * stride_up, cols, mask, ACT)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def act_block(f: int) -> int:
    """Columns a program: 1024 (8B's F = 14336: 14 programs a row), less for narrow rows."""
    return min(1024, triton.next_power_of_2(f))


def unsupported_reason(gate: Tensor, up: Optional[Tensor], act: str) -> Optional[str]:
    why = unsupported_device_or_dtype(gate, up)
    if why:
        return why
    if act not in ACTIVATIONS:
        return f"activation {act!r} is not one of {sorted(ACTIVATIONS)}"
    if up is None and gate.shape[-1] % 2:
        return f"fused gate_up has odd width {gate.shape[-1]}"
    if up is not None and (up.shape != gate.shape or up.dtype != gate.dtype):
        return "gate and up must have the same shape and dtype"
    return None


def supports(gate: Tensor, up: Optional[Tensor], act: str) -> bool:
    return unsupported_reason(gate, up, act) is None


def launch(gate: Tensor, up: Optional[Tensor], act: str) -> Tensor:
    why = unsupported_reason(gate, up, act)
    if why:
        raise NotImplementedError(f"triton gated_mlp_act: {why}")
    if up is None:
        f = gate.shape[-1] // 2
        g2 = rows_of(gate)  # [M, 2f]
        gate_rows, up_rows = g2[:, :f], g2[:, f:]  # strided views, no copy
    else:
        f = gate.shape[-1]
        gate_rows, up_rows = rows_of(gate), rows_of(up)  # [M, f]
    out = torch.empty(*gate.shape[:-1], f, dtype=gate.dtype, device=gate.device)
    out2 = out.view(-1, f)
    m = out2.shape[0]
    if m > 0 and f > 0:
        block = act_block(f)
        _gated_act_kernel[(m, triton.cdiv(f, block))](
            gate_rows, up_rows, out2, gate_rows.stride(0), up_rows.stride(0), out2.stride(0), f,
            ACT=ACTIVATIONS[act], BLOCK=block, PDL=pdl_enabled(gate.device), num_warps=4, **pdl_launch(gate.device),
        )
    return out


@torch.library.custom_op("autodeploy::triton_gated_mlp_act", mutates_args=())
def triton_gated_mlp_act(gate: Tensor, up: Tensor, act: str) -> Tensor:
    """gate, up [..., f] -> act(gate) * up [..., f]."""
    return launch(gate, up, act)


@triton_gated_mlp_act.register_fake
def _(gate, up, act):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("autodeploy::triton_fused_gated_mlp_act", mutates_args=())
def triton_fused_gated_mlp_act(gate_up: Tensor, act: str) -> Tensor:
    """gate_up [..., 2f] (gate first) -> act(gate) * up [..., f]."""
    return launch(gate_up, None, act)


@triton_fused_gated_mlp_act.register_fake
def _(gate_up, act):
    return gate_up.new_empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
