"""Small helpers for FX graph walks: op checks by identity (never by node names or strings)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import fx

aten = torch.ops.aten


def _packets(ops) -> tuple:
    ops = ops if isinstance(ops, (list, tuple, set)) else (ops,)
    return tuple(ops)


def is_op(node: fx.Node, ops) -> bool:
    """True when `node` calls one of `ops`; an OpOverloadPacket matches all of its overloads."""
    if node.op != "call_function":
        return False
    target = node.target
    for op in _packets(ops):
        if target is op:
            return True
        if isinstance(op, torch._ops.OpOverloadPacket) and getattr(target, "overloadpacket", None) is op:
            return True
    return False


def nodes_of(gm: fx.GraphModule, ops) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_op(n, ops)]


def val(node) -> torch.Tensor | None:
    """The FakeTensor (or SymInt) recorded for a node, if any."""
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def op_histogram(gm: fx.GraphModule) -> dict[str, int]:
    """Counts of call_function targets by their overload name, e.g. {'aten.linear.default': 7}."""
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        t = n.target
        key = t.name() if hasattr(t, "name") and callable(t.name) else getattr(t, "__name__", repr(t))
        key = key.replace("::", ".")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def replace_with_input(node: fx.Node, arg_index: int = 0) -> None:
    node.replace_all_uses_with(node.args[arg_index])
    node.graph.erase_node(node)


def replace_with_call(node: fx.Node, target, args: tuple, erase: Iterable[fx.Node] = ()) -> fx.Node:
    """A call_function(target, args) in node's place: inserted before it, with its shape, module stack and
    trace metadata, its users rewired; node and then `erase` (nodes it alone used) are removed."""
    graph = node.graph
    with graph.inserting_before(node):
        new = graph.call_function(target, args)
    new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack", "stack_trace")})
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    for old in erase:
        graph.erase_node(old)
    return new


def get_attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    assert node.op == "get_attr"
    obj = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj


def param_nodes(gm: fx.GraphModule) -> Iterable[fx.Node]:
    return (n for n in gm.graph.nodes if n.op == "get_attr")
