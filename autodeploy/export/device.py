"""Point a graph traced on the meta device at the real device.

Ops that create tensors (arange, full, zeros, to.dtype_layout …) record `device=meta` in their
arguments when the model is exported on meta; they must name the runtime device instead.
"""

from __future__ import annotations

import torch
from torch import fx


def _swap(value, device: torch.device):
    if isinstance(value, torch.device):
        return device if value.type == "meta" else value
    if isinstance(value, (list, tuple)):
        return type(value)(_swap(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _swap(v, device) for k, v in value.items()}
    return value


def retarget_device(gm: fx.GraphModule, device: torch.device | str) -> int:
    """Replace meta devices in node arguments by `device`; returns the number of nodes changed."""
    device = torch.device(device)
    changed = 0
    for node in gm.graph.nodes:
        args, kwargs = _swap(node.args, device), _swap(node.kwargs, device)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed += 1
    if changed:
        gm.recompile()
    return changed
