"""cleanup_export: drop what torch.export leaves behind that carries no computation.

    before:  x ─ _assert_tensor_metadata(x, dtype=f32, device=meta)     (asserts the trace device)
             x ─ to.dtype(x, float32) ─ y          where x is already float32
             x ─ alias(x) ─ y
             x ─ slice(x, dim, 0, INT64_MAX) ─ y                       (`x[:, :, None, :, :]` leaves these)
    after:   x ─ y

The graph is traced on the meta device, so the metadata asserts name `meta` and would fail on
the real device; no-op casts and aliases hide patterns from the matchers that follow.
"""

from __future__ import annotations

import torch

from autodeploy.graph import aten, is_op, val
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

_FULL = 2**63 - 1  # the end Python's `x[a:]` passes to aten.slice


def _full_slice(node) -> bool:
    """slice(x, dim, 0 | None, INT64_MAX | None, 1): a view of all of x."""
    args = list(node.args) + [None] * (5 - len(node.args))
    start, end, step = node.kwargs.get("start", args[2]), node.kwargs.get("end", args[3]), node.kwargs.get("step", args[4])
    return start in (None, 0) and end in (None, _FULL) and step in (None, 1)


@register(Stage.CLEANUP)
def apply(gm, ctx, cfg) -> TransformInfo:
    removed = 0
    for node in list(gm.graph.nodes):
        if is_op(node, aten._assert_tensor_metadata):
            gm.graph.erase_node(node)
            removed += 1
        elif is_op(node, aten.alias.default) or (is_op(node, aten.slice.Tensor) and _full_slice(node)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
        elif is_op(node, aten.to.dtype) and len(node.args) >= 2 and not node.kwargs:
            src = val(node.args[0])
            if isinstance(src, torch.Tensor) and src.dtype == node.args[1]:
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed += 1
    return TransformInfo(matches=removed, changed=removed > 0)
