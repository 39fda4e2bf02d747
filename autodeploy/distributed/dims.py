"""How ops move a split dim: the shape helpers the region solver's rules are written with.

A tensor split on dim d keeps a split dim through views that group d with trailing dims (a head
dim [b, s, n, d_h] <-> [b, s, n*d_h]), transposes, broadcasts and splits on other dims; the
helpers below say where it goes. Shapes come from node vals (symbolic batch / sequence dims
compared as sympy expressions, never specialized).
"""

from __future__ import annotations

import sympy
import torch
from torch import fx

from autodeploy.distributed.plan import Slice
from autodeploy.graph import aten, is_op, val

class Unsupported(Exception):
    """The region reaches an op no rule covers, or two paths disagree on a tensor's slice."""


VIEWS = (aten.view, aten.reshape, aten._unsafe_view)
PASS = (aten.contiguous, aten.clone, aten.alias, aten._to_copy, aten.to, aten.detach, aten.neg, aten.silu,
        aten.gelu, aten.relu, aten.tanh, aten.sigmoid, aten.exp, aten.sqrt, aten.rsqrt, aten.pow,
        aten.type_as, aten.lift_fresh_copy)
BINARY = (aten.add, aten.sub, aten.mul, aten.div, aten.maximum, aten.minimum)
NEW = (aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_full)
SPLITS = (aten.split_with_sizes, aten.split, aten.chunk)


def ndim(node) -> int:
    return val(node).dim()


def shape(node) -> list:
    return list(val(node).shape)


def _expr(d):
    return d.node.expr if isinstance(d, torch.SymInt) else sympy.Integer(int(d))


def _eq(a, b) -> bool:
    return sympy.expand(a - b) == 0


def _prod(dims) -> int | None:
    """Product of static dims; None if one is symbolic."""
    out = 1
    for d in dims:
        if isinstance(d, torch.SymInt):
            return None
        out *= int(d)
    return out


def norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


def view_map(src: list, dst: list, sl: Slice) -> Slice | None:
    """The slice of `dst` a view `src -> dst` gives when `src` is held as `sl`; None if not expressible."""
    sa = [sympy.Mul(*[_expr(d) for d in src[i:]]) for i in range(len(src) + 1)]
    sb = [sympy.Mul(*[_expr(d) for d in dst[j:]]) for j in range(len(dst) + 1)]
    bounds = [(i, j) for i in range(len(src) + 1) for j in range(len(dst) + 1) if _eq(sa[i], sb[j])]
    i0 = max(i for i, _ in bounds if i <= sl.dim)
    i1 = min(i for i, _ in bounds if i > sl.dim)
    j1 = min(j for i, j in bounds if i == i1)
    j0 = max((j for i, j in bounds if i == i0 and j < j1), default=None)
    if j0 is None or any(src[d] != 1 for d in range(i0, sl.dim)):
        return None  # the dim is not the leading one of its group: its slice is not contiguous
    inner_src = _prod(src[sl.dim + 1 : i1])
    dims = [d for d in range(j0, j1) if dst[d] != 1]
    if inner_src is None or not dims:
        return None
    inner_dst = _prod(dst[dims[0] + 1 : j1])
    if inner_dst is None:
        return None
    return sl.scaled(inner_src).divided(inner_dst, dim=dims[0])


def perm(node) -> list[int] | None:
    """Output dim i of a transpose / permute reads input dim perm[i]."""
    n = ndim(node)
    if is_op(node, aten.transpose):
        a, b = norm_dim(node.args[1], n), norm_dim(node.args[2], n)
        p = list(range(n))
        p[a], p[b] = b, a
        return p
    if is_op(node, aten.permute):
        return [norm_dim(d, n) for d in node.args[1]]
    return None


def aligned(node_in, out_ndim: int, dim: int) -> int | None:
    """The dim of a broadcast input that lines up with output dim `dim` (None: absent or size 1)."""
    if not isinstance(node_in, fx.Node) or not isinstance(val(node_in), torch.Tensor):
        return None
    d = dim - (out_ndim - ndim(node_in))
    if d < 0 or shape(node_in)[d] == 1:
        return None
    return d


def split_sizes(node) -> list[int]:
    x = node.args[0]
    dim = norm_dim(node.args[2] if len(node.args) > 2 else 0, ndim(x))
    if is_op(node, aten.split_with_sizes):
        return [int(s) for s in node.args[1]]
    total = int(shape(x)[dim])
    size = -(-total // int(node.args[1])) if is_op(node, aten.chunk) else int(node.args[1])  # chunk: count
    return [min(size, total - o) for o in range(0, total, size)]


def split_dim(node) -> int:
    return norm_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), ndim(node.args[0]))
