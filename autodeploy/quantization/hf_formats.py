"""Tensor layouts of Hugging Face quantized checkpoints <-> the canonical ops' parameters.

    ours (int4_wo_linear)    qweight [N, K/2] uint8 half-split, scales / zeros [N, K/g]
    GPTQ (v1, "gptq")        qweight int32 [K/8, N]: 8 values along K per word, value t at bits 4t
                             qzeros  int32 [K/g, N/8]: (zero - 1) & 0xF, 8 along N per word
                             scales  [K/g, N];  g_idx int32 [K] (= k // g without act-order)
    AWQ (GEMM)               qweight int32 [K, N/8]: nibble i holds column 8c + ORDER[i]
                             qzeros  int32 [K/g, N/8] (same packing, zero as is);  scales [K/g, N]
    fbgemm_fp8               weight e4m3 [N, K], weight_scale fp32 [N, 1]
    fp8 (fine-grained)       weight e4m3 [N, K], weight_scale_inv fp32 [N/bn, K/bk] (or a scalar)

Every format dequantizes as w = (q - zero) * scale (GPTQ v1 stores zero - 1, wrapping 0 to 15; the
reader adds 1 back modulo 16, as GPTQ's own kernels do).
"""

from __future__ import annotations

import torch
from torch import Tensor

from autodeploy.quantization import int4

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)  # bit offset of each of the 8 nibbles in an int32


def _pack_rows(q: Tensor) -> Tensor:
    """[R, C] values 0..15 -> int32 [R/8, C]: rows 8r..8r+7 into word r (row 8r + t at bits 4t)."""
    r, c = q.shape
    q = q.to(torch.int32).reshape(r // 8, 8, c)
    words = torch.zeros(r // 8, c, dtype=torch.int32, device=q.device)
    for t in range(8):
        words |= q[:, t] << (4 * t)
    return words


def _unpack_rows(words: Tensor) -> Tensor:
    """int32 [R/8, C] -> [R, C] uint8 (inverse of _pack_rows)."""
    w = words.to(torch.int32).unsqueeze(1) >> SHIFTS.to(words.device).view(1, 8, 1)  # [R/8, 8, C]
    return (w & 0xF).reshape(-1, words.shape[-1]).to(torch.uint8)


def _pack_cols(q: Tensor, order=tuple(range(8))) -> Tensor:
    """[R, C] -> int32 [R, C/8]: nibble i of word c holds column 8c + order[i]."""
    r, c = q.shape
    q = q.to(torch.int32).reshape(r, c // 8, 8)
    words = torch.zeros(r, c // 8, dtype=torch.int32, device=q.device)
    for i, col in enumerate(order):
        words |= q[..., col] << (4 * i)
    return words


def _unpack_cols(words: Tensor, order=tuple(range(8))) -> Tensor:
    nib = (words.to(torch.int32).unsqueeze(-1) >> SHIFTS.to(words.device)) & 0xF  # [R, C/8, 8] by nibble
    out = torch.empty_like(nib)
    out[..., list(order)] = nib
    return out.reshape(words.shape[0], -1).to(torch.uint8)


def check_packable(n: int, k: int) -> str | None:
    if n % 8 or k % 8:
        return f"weight [{n}, {k}]: GPTQ / AWQ pack 8 values per int32 along both dims"
    return None


# ---- GPTQ ---------------------------------------------------------------------------------------

def to_gptq(qweight: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> dict[str, Tensor]:
    q = int4.unpack(qweight)  # [N, K]
    k = q.shape[1]
    z = (zeros.round().to(torch.int32) - 1) & 0xF  # v1 stores zero - 1
    return {
        "qweight": _pack_rows(q.T.contiguous()),  # [K/8, N]
        "qzeros": _pack_cols(z.T.contiguous()),  # [K/g, N/8]
        "scales": scales.T.contiguous(),  # [K/g, N]
        "g_idx": torch.arange(k, dtype=torch.int32, device=q.device) // group_size,
    }


def from_gptq(qweight: Tensor, qzeros: Tensor, scales: Tensor, g_idx: Tensor | None, group_size: int,
              dtype: torch.dtype) -> dict[str, Tensor]:
    q = _unpack_rows(qweight).T.contiguous()  # [N, K]
    k = q.shape[1]
    if g_idx is not None and not torch.equal(g_idx.to(torch.int64).cpu(), torch.arange(k) // group_size):
        raise ValueError("GPTQ act-order (desc_act) checkpoints are not supported: g_idx is not k // group_size")
    zeros = ((_unpack_cols(qzeros).to(torch.int32) + 1) & 0xF).T  # [N, K/g]
    return {"qweight": int4.pack(q), "scales": scales.T.contiguous().to(dtype), "zeros": zeros.contiguous().to(dtype)}


# ---- AWQ (GEMM) ---------------------------------------------------------------------------------

def to_awq(qweight: Tensor, scales: Tensor, zeros: Tensor) -> dict[str, Tensor]:
    q = int4.unpack(qweight)  # [N, K]
    return {
        "qweight": _pack_cols(q.T.contiguous(), AWQ_ORDER),  # [K, N/8]
        "qzeros": _pack_cols(zeros.round().to(torch.int32).T.contiguous(), AWQ_ORDER),  # [K/g, N/8]
        "scales": scales.T.contiguous(),  # [K/g, N]
    }


def from_awq(qweight: Tensor, qzeros: Tensor, scales: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
    q = _unpack_cols(qweight, AWQ_ORDER).T.contiguous()  # [N, K]
    zeros = _unpack_cols(qzeros, AWQ_ORDER).T.contiguous()  # [N, K/g]
    return {"qweight": int4.pack(q), "scales": scales.T.contiguous().to(dtype), "zeros": zeros.to(dtype)}


# ---- FP8 ----------------------------------------------------------------------------------------

def to_fbgemm_fp8(weight: Tensor, weight_scale: Tensor) -> dict[str, Tensor]:
    n = weight.shape[0]
    scale = weight_scale.float().reshape(-1)
    return {"weight": weight, "weight_scale": scale.expand(n).reshape(n, 1).contiguous()}


def from_fbgemm_fp8(weight: Tensor, weight_scale: Tensor) -> dict[str, Tensor]:
    return {"weight": weight, "weight_scale": weight_scale.float().reshape(-1)}


def from_fine_grained_fp8(weight: Tensor, weight_scale_inv: Tensor) -> dict[str, Tensor]:
    """The scale keeps its block layout ([N/bn, K/bk]); fp8_linear dequantizes blocks itself."""
    s = weight_scale_inv.float()
    return {"weight": weight, "weight_scale": s.reshape(()) if s.numel() == 1 else s}
