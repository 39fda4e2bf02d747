"""cleanup_export: drop what torch.export leaves behind that carries no computation.

    before:  x ─ _assert_tensor_metadata(x, dtype=f32, device=meta)     (asserts the trace device)
             x ─ to.dtype(x, float32) ─ y          where x is already float32
             x ─ alias(x) ─ y
    after:   x ─ y

The graph is traced on the meta device, so the metadata asserts name `meta` and would fail on
the real device; no-op casts and aliases hide patterns from the matchers that follow.
"""

from __future__ import annotations

import torch

from autodeploy.graph import aten, is_op, val
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


@register(Stage.CLEANUP)
def apply(gm, ctx, cfg) -> TransformInfo:
    removed = 0
    for node in list(gm.graph.nodes):
        if is_op(node, aten._assert_tensor_metadata):
            gm.graph.erase_node(node)
            removed += 1
        elif is_op(node, aten.alias.default):
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
