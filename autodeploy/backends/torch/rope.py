"""autodeploy::rope — rotary position embedding of q and k, with its CPU reference implementation.

Layout "bsnd", like autodeploy::attention, so that rope -> attention needs no transposes and the
KV cache sees keys in the layout it stores:

    q [b, s, n, d], k [b, s, n_kv, d], cos [b, s, d_rot], sin [b, s, d_rot] -> (q_out, k_out)

cos / sin are HF's tables: cat(freqs, freqs) of the rotated dims, already scaled by the rope type's
attention factor. Only the first d_rot dims rotate (partial rotary, d_rot < d: Phi / StableLM /
GPT-NeoX); the rest pass through.

- interleaved=False: HF rotate_half, x * cos + rotate_half(x) * sin, the halves (x1, x2) rotated as
  pairs (x1[i], x2[i]).
- interleaved=True: pairs are adjacent, (x[2i], x[2i+1]), each rotated by angle i (the complex-frequency
  form, DeepSeek's rope_interleave). The output is laid out like transformers' DeepSeek code:
  the rotated even elements first, then the rotated odd ones. q and k get the same layout, so q·k
  equals the complex form's exactly.

Arithmetic runs in q's dtype with cos / sin cast to it, as HF does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """x [b, s, h, d]; cos / sin [b, s, 1, d_rot] in x's dtype."""
    d_rot = cos.shape[-1]
    x_rot, x_pass = x[..., :d_rot], x[..., d_rot:]
    half = d_rot // 2
    c, s = cos[..., :half], sin[..., :half]  # cat(freqs, freqs): the first half holds each pair's angle
    if interleaved:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    else:
        x1, x2 = x_rot[..., :half], x_rot[..., half:]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return torch.cat([out, x_pass], dim=-1) if x_pass.shape[-1] else out


@torch.library.custom_op("autodeploy::rope", mutates_args=())
def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> tuple[Tensor, Tensor]:
    """q [b, s, n, d], k [b, s, n_kv, d], cos / sin [b, s, d_rot] -> (q_out, k_out) like q, k."""
    cos_q, sin_q = cos.to(q.dtype).unsqueeze(2), sin.to(q.dtype).unsqueeze(2)  # [b, s, 1, d_rot]
    cos_k, sin_k = cos.to(k.dtype).unsqueeze(2), sin.to(k.dtype).unsqueeze(2)
    return _rotate(q, cos_q, sin_q, interleaved), _rotate(k, cos_k, sin_k, interleaved)


@rope.register_fake
def _(q, k, cos, sin, interleaved=False):
    torch._check(cos.shape[-1] <= q.shape[-1], lambda: "rope: d_rot exceeds the head dim")
    contiguous = torch.contiguous_format
    return torch.empty_like(q, memory_format=contiguous), torch.empty_like(k, memory_format=contiguous)
