"""RoPE spellings of transformers -> autodeploy::rope (q and k together, one match per layer).

All take q [b, n, s, d] and k [b, n_kv, s, d] in HF's bnsd layout and cos / sin [b, s, *] as the
rotary embedding module returns them; the replacement transposes to the op's bsnd and back (the
transposes cancel against the attention rewrite, see patterns/layout.py).

- rotate_half:   q * cos + rotate_half(q) * sin          Llama, Mistral, Qwen2/3, Gemma 1/2/3, Mixtral
- partial:       cat([rotate on q[..., :r], q[..., r:]])  Phi3 (r = cos.shape[-1], even when r == d)
- half_cos:      chunk(q, 2): [x1 c - x2 s, x2 c + x1 s] with half-width cos / sin   GPT-OSS
- interleaved:   q[..., 0::2], q[..., 1::2] pairs, half of cos                DeepSeek-V3 (transformers 5.2x)
- interleaved_view: view(.., d/2, 2).transpose(4, 3).reshape, then rotate_half   DeepSeek (older spelling)
"""

from __future__ import annotations

import torch

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten
from autodeploy.patterns.registry import Match, Pattern

_rope = torch.ops.autodeploy.rope.default
_t = torch.ops.aten.transpose.int


def _rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rope_rotate_half_pattern(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def rope_partial_pattern(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    q_rot, q_pass = q[..., :r], q[..., r:]
    k_rot, k_pass = k[..., :r], k[..., r:]
    q_embed = torch.cat([(q_rot * cos) + (_rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (_rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


def _half_cos(x, cos, sin):
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def rope_half_cos_pattern(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return _half_cos(q, cos, sin), _half_cos(k, cos, sin)


def rope_interleaved_pattern(q, k, cos, sin):
    cos = cos[..., : cos.shape[-1] // 2].unsqueeze(1)
    sin = sin[..., : sin.shape[-1] // 2].unsqueeze(1)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    k1, k2 = k[..., 0::2], k[..., 1::2]
    q_embed = torch.cat([q1 * cos - q2 * sin, q2 * cos + q1 * sin], dim=-1)
    k_embed = torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1)
    return q_embed, k_embed


def _deinterleave(x):
    b, h, s, d = x.shape
    return x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)


def rope_interleaved_view_pattern(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q, k = _deinterleave(q), _deinterleave(k)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _bsnd_rope(q, k, cos, sin, interleaved):
    out = _rope(_t(q, 1, 2), _t(k, 1, 2), cos, sin, interleaved)
    return _t(out[0], 1, 2), _t(out[1], 1, 2)


def rope_replacement(q, k, cos, sin):
    return _bsnd_rope(q, k, cos, sin, False)


def rope_half_cos_replacement(q, k, cos, sin):
    # the op takes HF's full-width tables, cat(freqs, freqs)
    cat = torch.ops.aten.cat.default
    return _bsnd_rope(q, k, cat([cos, cos], -1), cat([sin, sin], -1), False)


def rope_interleaved_replacement(q, k, cos, sin):
    return _bsnd_rope(q, k, cos, sin, True)


def _slices_ok(m: Match, r: int) -> bool:
    """Every matched last-dim slice takes a half (rotate_half, cos[..., :r/2]) or the r | d-r split."""
    for n in m.graph_nodes(aten.slice.Tensor):
        size = n.args[0].meta["val"].shape[-1]
        start, end = (list(n.args[2:4]) + [None, None])[:2]
        step = n.args[4] if len(n.args) > 4 else 1
        start, end = start or 0, size if end is None else min(end, size)
        if step == 2:  # DeepSeek's even / odd elements
            ok = start in (0, 1) and end == size
        else:
            ok = step == 1 and (start, end) in {(0, size // 2), (size // 2, size), (0, r), (r, size)}
        if not ok:
            return False
    return True


def _check(half_width: bool):
    def rope_check(m: Match) -> bool:
        q, k, cos, sin = (m.val(n) for n in ("q", "k", "cos", "sin"))
        if not all(isinstance(t, torch.Tensor) for t in (q, k, cos, sin)):
            return False
        if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or cos.shape != sin.shape:
            return False
        r = cos.shape[-1] * (2 if half_width else 1)
        if r % 2 or r > q.shape[-1] or q.shape[-1] != k.shape[-1] or not q.dtype.is_floating_point:
            return False
        return _slices_ok(m, r)

    return rope_check


def _example(sz, dtype, width=None):
    width = width or sz.d
    return dict(
        q=torch.randn(sz.b, sz.n, sz.s, sz.d, dtype=dtype), k=torch.randn(sz.b, sz.n_kv, sz.s, sz.d, dtype=dtype),
        cos=torch.randn(sz.b, sz.s, width, dtype=dtype), sin=torch.randn(sz.b, sz.s, width, dtype=dtype),
    )


# Longer spellings first: partial contains rotate_half, interleaved_view ends in it.
ROPE_PATTERNS = [
    Pattern("partial", rope_partial_pattern, rope_replacement, lambda sz, dt: _example(sz, dt, sz.r), _check(False)),
    # Phi3 slices even at full width: q[..., :d] traces to nothing, q[..., d:] to an empty slice
    Pattern("partial_full", rope_partial_pattern, rope_replacement, _example, _check(False)),
    Pattern("interleaved_view", rope_interleaved_view_pattern, rope_interleaved_replacement, _example, _check(False)),
    Pattern("interleaved", rope_interleaved_pattern, rope_interleaved_replacement, _example, _check(False)),
    Pattern("half_cos", rope_half_cos_pattern, rope_half_cos_replacement,
            lambda sz, dt: _example(sz, dt, sz.d // 2), _check(True)),
    Pattern("rotate_half", rope_rotate_half_pattern, rope_replacement, _example, _check(False)),
]
