"""`autodeploy::triton_cached_attention_rope_fp8_linear`: the Triton backend of autodeploy::cached_attention_rope_fp8_linear
(the decode attention and the FP8 o projection reading it; backends/torch/cached_attention_rope_fp8_linear.py).

    decode (T == b) up to 16 rows, quantize_input, operands both kernels take:
        paged_attention_decode_rope.decode_rope   out [T, n, d_v] and block_amax [T, n_kv] (fp32): max |out| over
                                                  each KV head's G query heads, of the values as stored
        fp8_gemv.launch_block_scaled (X_MODE 3)   s_x[t] = max(max_j block_amax[t, j] / 448, 1e-12); x tiles
                                                  quantized as the GEMV reads them
    otherwise: triton_cached_attention_rope, then triton_fp8_linear (its own paths by row count)

Why: FP8 decode ran between the attention and the o GEMV fp8_gemv's quantization kernel, one program reading the
row back for its amax and writing e4m3 codes and the scale (~1.4 us of an 8B layer's serial chain on an H200,
BENCHMARKS.md eighth session's trace). The attention already holds each KV head's output rows in registers when it
stores them (the last split merging them, or the only split), so it writes their amax too, and the GEMV quantizes
its x tiles itself, as after the gated activation (gated_act_fp8_linear.py: the same X_MODE 3): 2 launches a layer
instead of 3.

Numerics: out is decode_rope's, bit for bit (the amax is a side output); the max of the block amaxes is the row's
amax exactly; the GEMV's codes are fp8_gemv.quantize_e4m3 of x / s_x, a division as the quantization kernel does:
the result is bit-identical to triton_cached_attention_rope followed by triton_fp8_linear at the same GEMV config.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

import autodeploy.backends.torch.cached_attention_rope_fp8_linear  # noqa: F401  (the canonical op the fake calls)
from autodeploy.backends.triton import cached_attention_rope, fp8_gemv
from autodeploy.backends.triton._common import unit_stride
from autodeploy.backends.triton.paged_attention_decode_rope import decode_rope


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, cos: Tensor, sin: Tensor,
                       weight: Tensor, weight_scale: Tensor, sinks: Optional[Tensor] = None,
                       bias: Optional[Tensor] = None) -> Optional[str]:
    """None when the fused decode path takes this call's operands (any row count: more rows take the pair)."""
    why = cached_attention_rope.unsupported_reason(q, k, v, k_cache, v_cache, cos, sin, sinks)
    if why:
        return why
    x = q.new_empty(0, q.shape[1] * v_cache.shape[-1])  # the attention's output rows as the GEMV reads them
    return fp8_gemv.operand_problem(x, weight, weight_scale, bias)


def supports(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, cos: Tensor, sin: Tensor,
             weight: Tensor, weight_scale: Tensor, sinks: Optional[Tensor] = None, bias: Optional[Tensor] = None,
             quantize_input: bool = True) -> bool:
    return bool(quantize_input) and unsupported_reason(q, k, v, k_cache, v_cache, cos, sin, weight, weight_scale,
                                                       sinks, bias) is None


def _fused_decode(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Tensor, cos: Tensor,
                  sin: Tensor, sinks: Optional[Tensor], weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
                  quantize_input: bool) -> bool:
    """This call takes the two-kernel path: a decode step of <= 16 rows whose x the GEMV quantizes itself."""
    if not quantize_input or q.shape[0] != seq_lens.shape[0] or q.shape[0] > fp8_gemv.MAX_ROWS:
        return False
    return unsupported_reason(q, k, v, k_cache, v_cache, cos, sin, weight, weight_scale, sinks, bias) is None


@torch.library.custom_op("autodeploy::triton_cached_attention_rope_fp8_linear", mutates_args=("k_cache", "v_cache"))
def triton_cached_attention_rope_fp8_linear(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Tensor, cu_seqlens: Tensor,
    input_pos: Tensor, cache_lens: Tensor, page_table: Tensor, slot_mapping: Tensor, cos: Tensor, sin: Tensor,
    interleaved: bool, sinks: Optional[Tensor], scale: Optional[float], sliding_window: Optional[int],
    logit_softcap: Optional[float], weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
    quantize_input: bool = True,
) -> Tensor:
    """cached_attention_rope then its FP8 o projection -> [T, N]; 2 launches at decode up to 16 rows."""
    if not _fused_decode(q, k, v, k_cache, v_cache, seq_lens, cos, sin, sinks, weight, weight_scale, bias,
                         quantize_input):
        attn = cached_attention_rope.launch(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens,
                                            page_table, slot_mapping, cos, sin, interleaved, sinks, scale,
                                            sliding_window, logit_softcap)  # [T, n, d_v]
        return torch.ops.autodeploy.triton_fp8_linear(attn.reshape(attn.shape[0], -1), weight, weight_scale, bias,
                                                      quantize_input)
    q, k, v, cos, sin = (unit_stride(t) for t in (q, k, v, cos, sin))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t, n_kv = q.shape[0], k_cache.shape[2]
    block_amax = torch.empty(t, n_kv, dtype=torch.float32, device=q.device)  # [T, n_kv]
    attn = decode_rope(q, k, v, cos, sin, interleaved, k_cache, v_cache, slot_mapping, page_table, cache_lens, scale,
                       sliding_window, logit_softcap, sinks, block_amax=block_amax)  # [T, n, d_v]
    return fp8_gemv.launch_block_scaled(attn.view(t, -1), block_amax, weight, weight_scale, bias, q.dtype)


@triton_cached_attention_rope_fp8_linear.register_fake
def _(*args, **kwargs):
    return torch.ops.autodeploy.cached_attention_rope_fp8_linear(*args, **kwargs)
