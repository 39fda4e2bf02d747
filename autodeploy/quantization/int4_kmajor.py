"""K-major int4 layout for batch-1 decode GEMVs: repacked once from the canonical half-split layout.

    canonical (int4.py):  qweight [N, K/2] uint8 (half-split),  scales, zeros [N, K/g]
    K-major:              qweight_t [K/8, N] int32,             scales_t, zeros_t [K/g, N]

A word holds 8 codes of one column n, all from one group. With GW = g / 8 words per group, word
i = gw * GW + r (group gw, r < GW) holds in nibble j (bits 4j..4j+3) the code of

    k = gw * g + j * GW + r

i.e. each group's g input channels are cut into 8 runs of GW consecutive channels, run j in nibble j
("group-planar"). Why not the classic k = 8i + j: a kernel step reads BW <= GW consecutive words of a
group, and nibble plane j of that step then multiplies x[gw * g + j * GW + r0 : + BW], a contiguous
run of x (one vector load for the GEMV, a contiguous operand slice for the GEMM's tl.dot), where the
classic order needs x at stride 8 (one scalar load per value). Only the order of K inside a group
changes, identically for weights and x, so the product is the same sum.

Zero points stay zero points (not premultiplied -z * s): the kernels turn a nibble into the exact
fp32 q - z with one FMA on its magic-number bits (backends/triton/int4_kmajor_gemv.py), and the
reference dequantizes (q - z) * s exactly as autodeploy::int4_wo_linear does, bit for bit.

Words are little-endian int32 built from bytes (byte b = nibbles 2b, 2b + 1), so nibble 7 lands in
the sign bit without any signed-shift overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from autodeploy.quantization import int4


def check_shape(n: int, k: int, group_size: int) -> str | None:
    """None when a [n, k] int4 weight with this group size has a K-major form, else why not."""
    if group_size % 8 or group_size < 8:
        return f"group size {group_size} is not a multiple of 8 (8 codes per word, one group per word)"
    return int4.check_shape(n, k, group_size)


def pack(q: Tensor, group_size: int) -> Tensor:
    """q [N, K] codes 0..15 -> qweight_t [K/8, N] int32 (module docstring's order)."""
    n, k = q.shape
    gw = group_size // 8
    planes = q.to(torch.uint8).reshape(n, k // group_size, 8, gw)  # [n, group, j, r]
    nib = planes.permute(1, 3, 0, 2).reshape(k // 8, n, 4, 2)  # [word, n, byte, nibble in byte]
    packed = (nib[..., 0] | (nib[..., 1] << 4)).contiguous()  # [K/8, N, 4] uint8
    return packed.view(torch.int32).reshape(k // 8, n)


def unpack(words: Tensor, group_size: int) -> Tensor:
    """qweight_t [K/8, N] int32 -> q [N, K] uint8 in 0..15."""
    k8, n = words.shape
    gw = group_size // 8
    b = words.contiguous().view(torch.uint8).reshape(k8, n, 4)  # little-endian bytes of each word
    nib = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(k8 * 8 // group_size, gw, n, 8)  # [group, r, n, j]
    return nib.permute(2, 0, 3, 1).reshape(n, k8 * 8)


def from_half_split(qweight: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Canonical (qweight [N, K/2], scales, zeros [N, K/g]) -> K-major (qweight_t, scales_t, zeros_t).

    Runs on the tensors' device; peak extra memory ~3 bytes per weight (the unpacked codes and their
    permuted copy), freed on return."""
    return pack(int4.unpack(qweight), group_size), scales.t().contiguous(), zeros.t().contiguous()


def dequantize(words: Tensor, scales_t: Tensor, zeros_t: Tensor, group_size: int, dtype=torch.float32) -> Tensor:
    """K-major parts -> w [N, K] in `dtype`, the same values int4.dequantize gives for the canonical parts."""
    return int4.dequantize_q(unpack(words, group_size), scales_t.t(), zeros_t.t(), group_size, dtype)
