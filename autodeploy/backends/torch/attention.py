"""autodeploy::attention — the canonical attention op and its CPU reference implementation.

Layout "bsnd": q [b, s, n, d], k [b, s_k, n_kv, d], v [b, s_k, n_kv, d_v] -> out [b, s, n, d_v].

- GQA / MQA natively: n % n_kv == 0; query head h reads KV head h // (n // n_kv) (HF repeat_kv order).
- d_v may differ from d (DeepSeek MLA).
- causal: query i (absolute position s_k - s + i, i.e. queries are the last s positions) sees keys
  j <= its position. Without a KV cache s_k == s and this is the usual lower triangle.
- sliding_window w: additionally i - w < j, the convention of transformers' `sliding_window_overlay`
  (`kv_idx > q_idx - sliding_window`) used by Mistral, Gemma2/3 and GPT-OSS: w keys incl. itself.
- logit_softcap c: logits = c * tanh(logits / c) after scaling, before masking (Gemma2).
- sinks [n] (GPT-OSS): one extra logit per head that joins the softmax denominator only.
- scale: multiplies q·k; matchers always pass it explicitly (None means d ** -0.5).

The reference takes SDPA's path when there are no sinks and no softcap (fast and memory-light on
the CPU) and an explicit fp32 softmax otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _mask(s_q: int, s_k: int, causal: bool, sliding_window: Optional[int], device) -> Optional[Tensor]:
    """Boolean [s_q, s_k] mask, True = attend; None when every key is visible."""
    if not causal and sliding_window is None:
        return None
    q_pos = torch.arange(s_k - s_q, s_k, device=device).unsqueeze(1)  # [s_q, 1] absolute positions
    k_pos = torch.arange(s_k, device=device).unsqueeze(0)  # [1, s_k]
    keep = torch.ones(s_q, s_k, dtype=torch.bool, device=device)
    if causal:
        keep &= k_pos <= q_pos
    if sliding_window is not None:
        keep &= k_pos > q_pos - sliding_window
    return keep


def _explicit(q, k, v, sinks, scale, mask, logit_softcap) -> Tensor:
    """fp32 softmax attention with softcap and sinks; q [b, s, n, d] -> [b, s, n, d_v]."""
    b, s_q, n, d = q.shape
    n_kv, d_v = k.shape[2], v.shape[3]
    g = n // n_kv
    qg = q.float().reshape(b, s_q, n_kv, g, d).permute(0, 2, 3, 1, 4)  # [b, n_kv, g, s, d]
    kt = k.float().permute(0, 2, 3, 1).unsqueeze(2)  # [b, n_kv, 1, d, s_k]
    vt = v.float().permute(0, 2, 1, 3).unsqueeze(2)  # [b, n_kv, 1, s_k, d_v]
    logits = torch.matmul(qg, kt) * scale  # [b, n_kv, g, s, s_k]
    if logit_softcap is not None:
        logits = torch.tanh(logits / logit_softcap) * logit_softcap
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, n_kv, g, 1, 1).expand(b, n_kv, g, s_q, 1)
        logits = torch.cat([logits, sink], dim=-1)
        probs = torch.softmax(logits, dim=-1)[..., :-1]  # the sink only adds to the denominator
    else:
        probs = torch.softmax(logits, dim=-1)
    out = torch.matmul(probs, vt)  # [b, n_kv, g, s, d_v]
    return out.permute(0, 3, 1, 2, 4).reshape(b, s_q, n, d_v).to(q.dtype)


@torch.library.custom_op("autodeploy::attention", mutates_args=())
def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sinks: Optional[Tensor] = None,
    scale: Optional[float] = None,
    causal: bool = True,
    sliding_window: Optional[int] = None,
    logit_softcap: Optional[float] = None,
) -> Tensor:
    """q [b, s, n, d], k [b, s_k, n_kv, d], v [b, s_k, n_kv, d_v] -> [b, s, n, d_v]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s_q, s_k = q.shape[1], k.shape[1]
    mask = _mask(s_q, s_k, causal, sliding_window, q.device)
    if sinks is not None or logit_softcap is not None:
        return _explicit(q, k, v, sinks, scale, mask, logit_softcap)
    n, n_kv = q.shape[2], k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # bnsd for SDPA
    if n != n_kv:
        # repeat_interleave matches HF's repeat_kv head order; SDPA's enable_gqa is not in every backend.
        kt = kt.repeat_interleave(n // n_kv, dim=1)
        vt = vt.repeat_interleave(n // n_kv, dim=1)
    is_causal = causal and sliding_window is None and s_q == s_k
    out = F.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=None if is_causal else mask, is_causal=is_causal, scale=scale
    )
    return out.transpose(1, 2).contiguous()  # [b, s, n, d_v]


@attention.register_fake
def _(q, k, v, sinks=None, scale=None, causal=True, sliding_window=None, logit_softcap=None):
    torch._check(q.shape[2] % k.shape[2] == 0, lambda: "attention: n must be a multiple of n_kv")
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])
