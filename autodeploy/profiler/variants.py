"""Derived ops: new `torch.ops.autodeploy.<op>_<suffix>` ops with a canonical op's exact schema.

The backend-selection transform swaps a canonical op node for one of these without touching its
arguments. Each keeps the canonical op's fake (shape) implementation, so shape propagation and
torch.compile treat it as the same opaque op.

    <op>_compiled   the torch reference wrapped in torch.compile (Inductor fuses its pointwise work)
    <op>_tuned      dispatches at run time to the autotuner's choice for the call's shape bucket
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch._ops import OpOverload

_LIB = torch.library.Library("autodeploy", "FRAGMENT")


def op_name(op: OpOverload) -> str:
    """`rmsnorm` for torch.ops.autodeploy.rmsnorm.default."""
    return op._schema.name.split("::", 1)[1]


def derive_op(base: OpOverload, suffix: str, impl: Callable[..., Any]) -> OpOverload:
    """torch.ops.autodeploy.<base>_<suffix>.default with base's schema, `impl` on every device and
    base's fake. Defined once per process; later calls return the existing op."""
    name = f"{op_name(base)}_{suffix}"
    if not hasattr(torch.ops.autodeploy, name):
        schema = str(base._schema)
        _LIB.define(name + schema[schema.index("("):])
        _LIB.impl(name, impl, "CompositeExplicitAutograd")
        # The base's fake runs when base is called on fake tensors.
        torch.library.register_fake(f"autodeploy::{name}", lambda *a, **k: base(*a, **k), lib=_LIB)
    return getattr(torch.ops.autodeploy, name).default


def reference_fn(op: OpOverload) -> Callable[..., Any] | None:
    """The plain Python function behind a `torch.library.custom_op` (None for other ops)."""
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(op._schema.name)
    return getattr(opdef, "_init_fn", None)


def compiled_variant(base: OpOverload) -> OpOverload | None:
    """`<op>_compiled`: the reference compiled with torch.compile (lazily, on first call)."""
    fn = reference_fn(base)
    if fn is None:
        return None
    compiled: list[Callable[..., Any]] = []

    def impl(*args, **kwargs):
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=True))
        return compiled[0](*args, **kwargs)

    return derive_op(base, "compiled", impl)


# ---- run-time dispatch by shape bucket ----------------------------------------------------------
# {op name: {signature: [(rows, chosen OpOverload), ...]}}, filled by select_backends
_TUNED: dict[str, dict[tuple, list[tuple[int, OpOverload]]]] = {}


def signature(args: tuple[Any, ...]) -> tuple:
    """What stays fixed across calls of one site: each tensor argument's last dim and dtype."""
    return tuple((str(a.shape[-1]) if a.dim() else "", str(a.dtype)) for a in args if isinstance(a, torch.Tensor))


def rows(args: tuple[Any, ...]) -> int:
    """What varies with the step: the first tensor argument's rows (numel over its last dim)."""
    t = next(a for a in args if isinstance(a, torch.Tensor))
    return t.numel() // max(1, t.shape[-1]) if t.dim() else 1


def weight_shapes(args: tuple[Any, ...]) -> tuple:
    """Full shapes of the tensor arguments after the first: at a site whose other tensors are all
    parameters (weights, scales) they are fixed, and tell apart sites of one K (qkv / o / gate_up)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return tuple(tuple(int(d) for d in t.shape) for t in tensors[1:])


def tuned_variant(base: OpOverload, sig: tuple, table: list[tuple[int, OpOverload]]) -> OpOverload:
    """`<op>_tuned`: picks, per call, the choice of the tuned bucket nearest in rows (log scale).

    `sig` is signature(args), or signature(args) + weight_shapes(args) for a site whose other
    tensors are parameters (select_backends decides those per weight shape); calls look up both."""
    name = op_name(base)
    _TUNED.setdefault(name, {})[sig] = sorted(table, key=lambda e: e[0])

    def impl(*args, **kwargs):
        plain = signature(args)
        entries = _TUNED[name].get(plain + weight_shapes(args)) or _TUNED[name].get(plain)
        if not entries:
            return base(*args, **kwargs)
        r = max(1, rows(args))
        _, op = min(entries, key=lambda e: abs(math.log(max(1, e[0])) - math.log(r)))
        return op(*args, **kwargs)

    return derive_op(base, "tuned", impl)
