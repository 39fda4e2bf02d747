"""autodeploy::cached_attention_rope_fp8_linear — the decode attention and the FP8 o projection reading it, as one op.

    (the arguments of autodeploy::cached_attention_rope), weight e4m3 [N, n * d_v], weight_scale, bias?, quantize_input
        -> fp8_linear(cached_attention_rope(...).reshape(T, n * d_v), weight, weight_scale, bias, quantize_input) [T, N]

transforms/fuse_attention_into_fp8_gemv.py makes it out of that pair so that a backend can hand the attention's
output to the GEMV with its per-token scale already known: the Triton twin's attention kernel writes each KV head's
max |out| beside out, and the FP8 GEMV quantizes x as it reads it (backends/triton/cached_attention_rope_fp8_linear.py:
no quantization launch between them). This reference only composes the two reference ops: on the CPU the fused
graph computes bit for bit what the pair did. The caches are mutated as by cached_attention_rope.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.cached_attention_rope import cached_attention_rope
from autodeploy.backends.torch.quant_linear import fp8_linear


@torch.library.custom_op("autodeploy::cached_attention_rope_fp8_linear", mutates_args=("k_cache", "v_cache"))
def cached_attention_rope_fp8_linear(
    q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, seq_lens: Tensor, cu_seqlens: Tensor,
    input_pos: Tensor, cache_lens: Tensor, page_table: Tensor, slot_mapping: Tensor, cos: Tensor, sin: Tensor,
    interleaved: bool, sinks: Optional[Tensor], scale: Optional[float], sliding_window: Optional[int],
    logit_softcap: Optional[float], weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
    quantize_input: bool = True,
) -> Tensor:
    """The step's attention (RoPE, cache write, attend) [T, n, d_v], then its FP8 o projection -> [T, N]."""
    attn = cached_attention_rope(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table,
                                 slot_mapping, cos, sin, interleaved, sinks, scale, sliding_window, logit_softcap)
    return fp8_linear(attn.reshape(attn.shape[0], -1), weight, weight_scale, bias, quantize_input)


@cached_attention_rope_fp8_linear.register_fake
def _(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping, cos, sin,
      interleaved, sinks, scale, sliding_window, logit_softcap, weight, weight_scale, bias=None, quantize_input=True):
    torch._check(q.shape[1] * v_cache.shape[-1] == weight.shape[1],
                 lambda: "cached_attention_rope_fp8_linear: the weight's K must be n * d_v")
    return q.new_empty(q.shape[0], weight.shape[0])
