"""Layout clean-up shared by the matchers that switch between bnsd and bsnd.

HF computes attention in bnsd ([b, n, s, d]); the canonical ops take bsnd. A replacement wraps
its op in transpose(1, 2) on the way in and out, so after rope and attention are both rewritten
the graph holds back-to-back transposes:

    view ─ transpose(1, 2) ─ transpose(1, 2) ─ autodeploy.rope ─ ...     ->    view ─ autodeploy.rope

A head norm between them (Gemma3 normalizes q / k after the transpose) works on the last dim only,
so the transposes move across it:

    x ─ transpose ─ rmsnorm ─ transpose    ->    x ─ rmsnorm

and HF's SDPA wrapper reshapes its output to the shape it already has ([b, -1, s, d_v]), which
would keep the transposes around the attention op apart:

    x ─ reshape(same shape)    ->    x
"""

from __future__ import annotations

import torch

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.patterns.registry import Match, Pattern

EPS = 0.00123  # sentinel


def transpose_pair_pattern(x):
    return x.transpose(1, 2).transpose(1, 2)


def identity_replacement(x):
    return x


def _rmsnorm_through_transpose(offset: bool):
    def rmsnorm_transpose_pattern(x, weight, eps):
        return torch.ops.autodeploy.rmsnorm.default(x.transpose(1, 2), weight, eps, offset).transpose(1, 2)

    def rmsnorm_transpose_replacement(x, weight, eps):
        return torch.ops.autodeploy.rmsnorm.default(x, weight, eps, offset)

    return rmsnorm_transpose_pattern, rmsnorm_transpose_replacement


def noop_reshape_pattern(x):
    return x.reshape(x.shape[0], -1, x.shape[2], x.shape[3])


def noop_reshape_check(m: Match) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    x, out = m.val("x"), m.outputs[0].meta.get("val")
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.dim() != out.dim():
        return False
    return all(statically_known_true(a == b) for a, b in zip(x.shape, out.shape))


def _example(sz, dtype):
    return dict(x=torch.randn(sz.b, sz.s, sz.n, sz.d, dtype=dtype))


def _norm_example(sz, dtype):
    return dict(x=torch.randn(sz.b, sz.s, sz.n, sz.d, dtype=dtype), weight=torch.randn(sz.d, dtype=dtype), eps=EPS)


LAYOUT_PATTERNS = [
    Pattern("rmsnorm_transpose", *_rmsnorm_through_transpose(False), _norm_example, dtypes=(torch.float32,)),
    Pattern("rmsnorm_unit_offset_transpose", *_rmsnorm_through_transpose(True), _norm_example, dtypes=(torch.float32,)),
    Pattern("noop_reshape", noop_reshape_pattern, identity_replacement, _example, noop_reshape_check,
            dtypes=(torch.float32,)),
    Pattern("transpose_pair", transpose_pair_pattern, identity_replacement, _example, dtypes=(torch.float32,)),
]
