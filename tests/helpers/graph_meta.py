"""Every node's fake value as comparable text: shortcuts that set `meta['val']` themselves (or load it
faster) are checked against the slow, general path node by node."""

from __future__ import annotations

import re

import torch
from torch import fx

_SYMBOL = re.compile(r"\b([su])(\d+)\b")  # ShapeEnv symbols: s (backed), u (unbacked)


def _describe(val) -> object:
    if isinstance(val, torch.Tensor):
        return ("tensor", str(tuple(val.shape)), str(val.stride()), str(val.dtype), str(val.device))
    if isinstance(val, (list, tuple)):
        return tuple(_describe(v) for v in val)
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return ("sym", str(val))
    return ("other", repr(val))


def node_vals(gm: fx.GraphModule, *, rename_symbols: bool = True) -> list[tuple]:
    """(name, op, described meta['val']) for each node; '<none>' where a node has no value.

    With `rename_symbols`, shape symbols are numbered in order of first appearance (s39 -> s0): two
    runs over copies of one graph create the same symbols under different numbers."""
    rows = [(n.name, n.op, _describe(n.meta["val"]) if "val" in n.meta else "<none>") for n in gm.graph.nodes]
    if not rename_symbols:
        return rows
    names: dict[str, str] = {}

    def rename(m: re.Match) -> str:
        return names.setdefault(m.group(0), f"{m.group(1)}{sum(k[0] == m.group(1) for k in names)}")

    return [(name, op, _SYMBOL.sub(rename, str(desc))) for name, op, desc in rows]
