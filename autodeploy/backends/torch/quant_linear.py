"""Canonical quantized linears and their references (CPU-capable; see autodeploy/quantization/).

    fp8_linear(x [.., K], weight e4m3 [N, K], weight_scale fp32 [N] | [] | [N/bn, K/bk], bias?, quantize_input)
        quantize_input: x is rounded to e4m3 per token (dynamic scale), as the GPU's FP8 GEMM reads it.
        CUDA (sm89+, bf16 x, per-channel / per-tensor scales, K and N multiples of 16): torch._scaled_mm
        with row-wise scales; elsewhere both operands dequantized and multiplied in fp32.
    int8_wo_linear(x [.., K], weight int8 [N, K], weight_scale fp32 [N], bias?)
        (x @ weight^T) * scale: the scale applies after the product, so no scaled weight is built.
    int4_wo_linear(x [.., K], qweight uint8 [N, K/2], scales [N, K/g], zeros [N, K/g], bias?, group_size)
        the weight dequantized to x's dtype, then one GEMM (autodeploy::triton_int4_wo_linear reads
        the packed weight directly on the GPU).
    int4_wo_linear_kmajor(x [.., K], qweight_t int32 [K/8, N], scales_t [K/g, N], zeros_t [K/g, N], bias?, group_size)
        the same linear on the K-major layout of autodeploy/quantization/int4_kmajor.py (made on the
        GPU by transforms/repack_int4_kmajor.py for the decode GEMV); the same dequantized values.
    dequantize_per_channel(q, scale, dtype) -> q * scale in `dtype`: MoE expert stacks stored as int8 / fp8.

All return x's dtype and shape [.., N].
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from autodeploy.quantization import fp8 as fp8_q
from autodeploy.quantization import int4 as int4_q
from autodeploy.quantization import int4_kmajor


@functools.lru_cache(maxsize=None)
def _has_fp8_mma(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def scaled_mm_reason(x: Tensor, weight: Tensor, weight_scale: Tensor, quantize_input: bool) -> Optional[str]:
    """None when torch._scaled_mm takes this call, else why it falls back to the dequantizing path."""
    if not (x.is_cuda and quantize_input):
        return "not CUDA with quantized activations"
    if not _has_fp8_mma(x.device.index or 0):
        return "no FP8 tensor cores (needs sm89+)"
    if x.dtype != torch.bfloat16:
        return "row-wise scaled_mm writes bf16 only"
    n, k = weight.shape
    if n % 16 or k % 16:
        return f"weight [{n}, {k}] is not a multiple of 16"
    if weight_scale.numel() not in (1, n):
        return "block-wise weight scales"
    return None


def _fp8_scaled_mm(x2: Tensor, weight: Tensor, weight_scale: Tensor) -> Tensor:
    xq, xs = fp8_q.quantize_rows(x2)  # [M, K] e4m3, [M, 1]
    n = weight.shape[0]
    ws = weight_scale.float().reshape(1, -1).expand(1, n).contiguous()  # [1, N]
    # weight [N, K] row-major is the column-major [K, N] operand cuBLASLt wants, without a copy
    return torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=ws, out_dtype=x2.dtype, use_fast_accum=True)


@torch.library.custom_op("autodeploy::fp8_linear", mutates_args=())
def fp8_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True
) -> Tensor:
    """x [.., K] @ dequant(weight [N, K])^T (+ bias) -> [.., N] in x's dtype."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)  # [M, K]
    if scaled_mm_reason(x, weight, weight_scale, quantize_input) is None:
        out = _fp8_scaled_mm(x2, weight, weight_scale)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])
    if quantize_input:
        xq, xs = fp8_q.quantize_rows(x2)
        xf = xq.float() * xs
    else:
        xf = x2.float()
    w = fp8_q.dequantize(weight, weight_scale)  # [N, K] fp32
    out = F.linear(xf, w, None if bias is None else bias.float())
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@fp8_linear.register_fake
def _(x, weight, weight_scale, bias=None, quantize_input=True):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("autodeploy::int8_wo_linear", mutates_args=())
def int8_wo_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x [.., K] @ (weight [N, K] * scale [N, 1])^T (+ bias) -> [.., N]."""
    if x.dtype == torch.float32 or x.device.type != "cpu":
        out = F.linear(x, weight.to(x.dtype)) * weight_scale.to(x.dtype)
    else:  # reduced precision on the CPU: accumulate in fp32 (the GPU's GEMMs do)
        out = (F.linear(x.float(), weight.float()) * weight_scale.float()).to(x.dtype)
    return out if bias is None else out + bias


@int8_wo_linear.register_fake
def _(x, weight, weight_scale, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _linear_dequantized(x: Tensor, dequantized, bias: Optional[Tensor]) -> Tensor:
    """x @ dequantized(dtype)^T (+ bias), dequantized(dtype) -> [N, K]: in x's dtype on GPUs and in fp32;
    half precision on the CPU dequantizes and multiplies in fp32, then casts (the CPU's reference path)."""
    if x.dtype == torch.float32 or x.device.type != "cpu":
        return F.linear(x, dequantized(x.dtype), bias)
    return F.linear(x.float(), dequantized(torch.float32), None if bias is None else bias.float()).to(x.dtype)


@torch.library.custom_op("autodeploy::int4_wo_linear", mutates_args=())
def int4_wo_linear(
    x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, bias: Optional[Tensor] = None, group_size: int = 128
) -> Tensor:
    """x [.., K] @ dequant(qweight [N, K/2])^T (+ bias) -> [.., N]."""
    return _linear_dequantized(x, lambda dtype: int4_q.dequantize(qweight, scales, zeros, group_size, dtype), bias)


@int4_wo_linear.register_fake
def _(x, qweight, scales, zeros, bias=None, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("autodeploy::int4_wo_linear_kmajor", mutates_args=())
def int4_wo_linear_kmajor(
    x: Tensor, qweight_t: Tensor, scales_t: Tensor, zeros_t: Tensor, bias: Optional[Tensor] = None,
    group_size: int = 128,
) -> Tensor:
    """x [.., K] @ dequant(qweight_t [K/8, N])^T (+ bias) -> [.., N]; int4_wo_linear's numerics."""
    return _linear_dequantized(
        x, lambda dtype: int4_kmajor.dequantize(qweight_t, scales_t, zeros_t, group_size, dtype), bias)


@int4_wo_linear_kmajor.register_fake
def _(x, qweight_t, scales_t, zeros_t, bias=None, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight_t.shape[1])


@torch.library.custom_op("autodeploy::dequantize_per_channel", mutates_args=())
def dequantize_per_channel(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """q (int8 / e4m3, any shape) * scale (broadcastable, fp32) -> `dtype`."""
    return (q.float() * scale.float()).to(dtype)


@dequantize_per_channel.register_fake
def _(q, scale, dtype):
    return q.new_empty(q.shape, dtype=dtype)
