"""Inductor fallback kernels for the graph's custom ops, registered before torch.compile runs.

Inductor turns an op it has no lowering for into a fallback kernel the first time it meets it.
torch 2.11 first formats a log line with the op's arguments' IR, and that IR prints its inputs
recursively without a memo: the string grows exponentially with the depth of the DAG behind the
first call site. An op first met at the end of the graph (the final add + RMSNorm + lm_head fold,
behind 16 layers of two-output fused ops) never finishes printing: the 1B build hung there on the
H100. Registering the same fallback up front, with the layout constraint Inductor would choose,
skips that path (torch >= 2.12 formats the line lazily; the registration is harmless there).
"""

from __future__ import annotations

import logging

import torch
from torch import fx

log = logging.getLogger(__name__)


def custom_ops(gm: fx.GraphModule) -> list[torch._ops.OpOverload]:
    """Non-aten OpOverloads the graph calls (ours and plug-ins'), in first-use order."""
    seen: dict = {}
    for node in gm.graph.nodes:
        t = node.target
        if node.op == "call_function" and isinstance(t, torch._ops.OpOverload) and t.namespace not in ("aten", "prims"):
            seen.setdefault(t, None)
    return list(seen)


def register_fallbacks(gm: fx.GraphModule) -> list[torch._ops.OpOverload]:
    """Give Inductor a fallback for every custom op of gm it has no lowering for; returns those registered."""
    try:
        from torch._inductor import lowering
        from torch._library.utils import get_layout_constraint_tag
    except ImportError as e:  # a torch without these internals: Inductor's own implicit path stays
        log.warning("Inductor fallbacks not pre-registered (%s): deep graphs may compile slowly", e)
        return []
    done = []
    for op in custom_ops(gm):
        if op in lowering.lowerings:
            continue
        # what Inductor's implicit fallback picks for a custom op (its tag, or the default one)
        constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
        lowering.make_fallback(op, layout_constraint=constraint, warn=False)
        done.append(op)
    return done
