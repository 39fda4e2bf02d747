"""Every node's fake value as comparable text: shortcuts that set `meta['val']` themselves (or load it
faster) are checked against the slow, general path node by node."""

from __future__ import annotations

import torch
from torch import fx


def _describe(val) -> object:
    if isinstance(val, torch.Tensor):
        return ("tensor", str(tuple(val.shape)), str(val.stride()), str(val.dtype), str(val.device))
    if isinstance(val, (list, tuple)):
        return tuple(_describe(v) for v in val)
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return ("sym", str(val))
    return ("other", repr(val))


def node_vals(gm: fx.GraphModule) -> list[tuple]:
    """(name, op, described meta['val']) for each node; '<none>' where a node has no value."""
    return [(n.name, n.op, _describe(n.meta["val"]) if "val" in n.meta else "<none>") for n in gm.graph.nodes]
