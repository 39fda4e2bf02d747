"""Attention spellings of transformers -> autodeploy::attention.

All take q [b, n, s, d], k [b, n_kv, s, d], v [b, n_kv, s, d_v] in HF's bnsd layout (k / v before
repeat_kv); the replacement transposes to the op's bsnd and back. Spellings, each with and
without HF's repeat_kv (unsqueeze / expand / reshape; absent when n == n_kv):

- sdpa:        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)   (bool or additive mask)
- sdpa_causal: the same with attn_mask=None, is_causal=True
- sdpa_gqa:    enable_gqa=True instead of repeat_kv, with or without a mask
- eager:       matmul(q, k^T) * scale [/ c, tanh, * c] + mask, softmax(fp32), dropout(0), matmul(., v)
               (Llama's eager_attention_forward; Gemma2's with logit softcap c)
- sinks:       GPT-OSS: cat([logits, sinks]) - max, softmax, drop the sink column, dropout(0), matmul

The mask only gates the match: `match_attention` proves it causal (with window w) and passes
causal=True, sliding_window=w; the mask-building subgraph then has no users and is removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.patterns.registry import Pattern

SCALE, SOFTCAP = 0.01234, 31.25  # sentinels: found nowhere else in the traced patterns

_attention = torch.ops.autodeploy.attention.default
_t = torch.ops.aten.transpose.int


def _repeat_kv(x, n_rep):
    b, n_kv, s, d = x.shape
    x = x[:, :, None, :, :].expand(b, n_kv, n_rep, s, d)
    return x.reshape(b, n_kv * n_rep, s, d)


def _kv(q, k, v, repeat: bool):
    if not repeat:
        return k, v
    n_rep = q.shape[1] // k.shape[1]
    return _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)


def _sdpa_pattern(repeat: bool, gqa: bool, masked: bool):
    def sdpa_pattern(q, k, v, scale, mask=None):
        k, v = _kv(q, k, v, repeat)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, scale=scale, is_causal=not masked, enable_gqa=gqa
        )

    return sdpa_pattern


def _eager_pattern(repeat: bool, softcap: bool, sinks: bool):
    def eager_pattern(q, k, v, mask, scale, softcap=None, sinks=None):
        k, v = _kv(q, k, v, repeat)
        w = torch.matmul(q, k.transpose(2, 3)) * scale
        if softcap is not None:
            w = w / softcap
            w = torch.tanh(w)
            w = w * softcap
        w = w + mask
        if sinks is None:
            w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            w = F.dropout(w, p=0.0, training=False)
        else:
            sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
            logits = torch.cat([w, sink], dim=-1)
            logits = logits - logits.max(dim=-1, keepdim=True).values
            probs = F.softmax(logits, dim=-1, dtype=logits.dtype)
            w = F.dropout(probs[..., :-1], p=0.0, training=False).to(v.dtype)
        return torch.matmul(w, v)

    return eager_pattern


def attention_replacement(q, k, v, scale, sliding_window, mask=None, softcap=None, sinks=None):
    """bnsd in and out, around the bsnd op (the mask is proven causal by the check, and dropped)."""
    out = _attention(_t(q, 1, 2), _t(k, 1, 2), _t(v, 1, 2), sinks, scale, True, sliding_window, softcap)
    return _t(out, 1, 2)


def _example(masked=True, softcap=False, sinks=False, additive=False, mha=False):
    def example(sz, dtype):
        d_v = sz.d // 2  # d_v != d keeps the DeepSeek case in every trace
        n_kv = sz.n if mha else sz.n_kv
        ex = dict(
            q=torch.randn(sz.b, sz.n, sz.s, sz.d, dtype=dtype), k=torch.randn(sz.b, n_kv, sz.s, sz.d, dtype=dtype),
            v=torch.randn(sz.b, n_kv, sz.s, d_v, dtype=dtype), scale=SCALE,
        )
        if masked:
            shape = (sz.b, 1, sz.s, sz.s)
            ex["mask"] = torch.zeros(shape, dtype=dtype) if additive else torch.ones(shape, dtype=torch.bool)
        if softcap:
            ex["softcap"] = SOFTCAP
        if sinks:
            ex["sinks"] = torch.randn(sz.n, dtype=dtype)
        return ex

    return example


def attention_check(m):
    """The transform decides (shapes, mask proof, window): `match.context.check(match)`."""
    return m.context.check(m)


def _attention_patterns() -> list[Pattern]:
    """Every spelling, the longest first."""
    check, pats = attention_check, []
    for repeat in (True, False):
        tag, mha = ("_repeat_kv", False) if repeat else ("", True)
        pats += [
            Pattern(f"eager_sinks{tag}", _eager_pattern(repeat, False, True), attention_replacement,
                    _example(sinks=True, additive=True, mha=mha), check),
            Pattern(f"eager_softcap{tag}", _eager_pattern(repeat, True, False), attention_replacement,
                    _example(softcap=True, additive=True, mha=mha), check),
            Pattern(f"eager{tag}", _eager_pattern(repeat, False, False), attention_replacement,
                    _example(additive=True, mha=mha), check),
            Pattern(f"sdpa{tag}", _sdpa_pattern(repeat, False, True), attention_replacement, _example(mha=mha), check),
            Pattern(f"sdpa_causal{tag}", _sdpa_pattern(repeat, False, False), attention_replacement,
                    _example(masked=False, mha=mha), check),
        ]
    pats += [
        Pattern("sdpa_gqa", _sdpa_pattern(False, True, True), attention_replacement, _example(), check),
        Pattern("sdpa_gqa_causal", _sdpa_pattern(False, True, False), attention_replacement,
                _example(masked=False), check),
    ]
    return pats


ATTENTION_PATTERNS = _attention_patterns()
