"""Helpers for hand-written FX node walks (variable-arity structure such as MoE blocks).

A walk reads a structure off the graph with `is_op` checks and raises `NoMatch` with a short
reason where the graph differs from what it knows; the transform reports the reason and leaves
that part of the graph alone.
"""

from __future__ import annotations

import operator
from typing import Any

from torch import fx

from autodeploy.graph import aten, is_op, val

RESHAPES = (aten.reshape, aten.view, aten._unsafe_view)
CASTS = (aten.to, aten._to_copy)
ADDS = (aten.add.Tensor, aten.add_.Tensor)
MULS = (aten.mul.Tensor, aten.mul.Scalar, aten.mul_.Tensor)
SOFTMAX = (aten.softmax.int, aten._softmax.default)


class NoMatch(Exception):
    """A candidate block whose structure this walk does not know; the message says where it stopped."""


def peel(node, ops) -> Any:
    """Follow args[0] through ops of `ops` (casts, views): the first node that is not one of them."""
    while isinstance(node, fx.Node) and is_op(node, ops):
        node = node.args[0]
    return node


def need(cond: bool, where: str) -> None:
    """Raise NoMatch(where) unless cond: the walk's one way of saying 'not this structure'."""
    if not cond:
        raise NoMatch(where)


def getitem_of(node, index: int, ops) -> fx.Node:
    """node == getitem(producer, index) with producer one of `ops`; returns the producer."""
    need(isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem, f"{node} is not a getitem")
    src, idx = node.args
    need(idx == index and is_op(src, ops), f"{node} is not output {index} of {ops}")
    return src


def only_user(node: fx.Node, ops=None) -> fx.Node:
    users = [u for u in node.users if not is_op(u, aten._assert_tensor_metadata)]
    need(len(users) == 1 and (ops is None or is_op(users[0], ops)), f"{node} has users {users}, expected one {ops}")
    return users[0]


def scalar_arg(node: fx.Node) -> tuple[fx.Node, float] | None:
    """mul(t, c) / mul(c, t) with a Python number c -> (t, c)."""
    a, b = node.args[0], node.args[1]
    if isinstance(b, (int, float)) and isinstance(a, fx.Node):
        return a, float(b)
    if isinstance(a, (int, float)) and isinstance(b, fx.Node):
        return b, float(a)
    return None


def last_dim(node: fx.Node, dim) -> bool:
    v = val(node)
    return isinstance(dim, int) and v is not None and dim in (-1, v.dim() - 1)


def is_param(node, ndim: int) -> bool:
    v = val(node) if isinstance(node, fx.Node) else None
    return isinstance(node, fx.Node) and node.op == "get_attr" and (v is None or v.dim() == ndim)
