"""fold_position_tables: what the graph computes from position_ids alone becomes one table lookup.

    before:  position_ids ─ unsqueeze ─ to(f32) ─ mul(inv_freq) ─ cat ─┬─ cos ─ mul(scale) ─ to(bf16) ─ cos
                                                                       └─ sin ─ mul(scale) ─ to(bf16) ─ sin
    after:   autodeploy.position_table(get_attr(table) [2, L, d], position_ids) ─ [2, 1, s, d] ─┬─ select(0, 0)
                                                                                              └─ select(0, 1)

RoPE's cos / sin are a function of each token's position and buffers (inv_freq, the rope type's scale),
recomputed every step: at the head of every 8B decode graph ~10 small kernels (the position x inv_freq
product, cat, cos, sin, two scalings, two casts), ~15 us of serial launches on an H200 (BENCHMARKS.md,
eighth session's engine trace) before the first layer may start. A table of every position below
runtime.max_seq_len is computed once instead, and a step looks its rows up in one launch
(backends/triton/position_table.py on CUDA).

What is folded: the nodes that depend on position_ids and otherwise only on real buffers (get_attr
tensors with values at build time: HF's inv_freq buffers are computed on the CPU as the meta model is
built) through deterministic aten ops; of those, each floating-point value read by a node outside that set
whose shape is position_ids' shape followed by static dims (the per-position row). The fold is checked
before it is made: the subgraph evaluated at random positions must equal the table's rows at those
positions bit for bit (a value mixing positions, such as a cumulative sum, fails and is left alone).
Values of one row shape and dtype share one table, so a step does one lookup for all of them (Gemma 3's
local and global RoPE: four rows a position).

Numerics: the table is computed by the graph's own ops on the device the graph runs on: WeightPlan.derive has
load_weights (and a calibration pass that runs the graph before the weights load) compute it there; at
transform time it is computed where the buffers are, for graphs that never load weights. Elementwise kernels
give each position the same bits whichever positions share a launch, so the lookup returns exactly what the
graph computed. Positions are clamped into [0, max_seq_len - 1] (the engine never schedules one past it).
"""

from __future__ import annotations

import copy
import math
import operator

import torch
from pydantic import Field
from torch import fx

import autodeploy.ops  # noqa: F401  (autodeploy::position_table)
import autodeploy.transforms.match_rope  # noqa: F401  (registers first: the rope patterns see the graph as exported)
from autodeploy.graph import val
from autodeploy.models.weights import weight_plan
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

POSITION_TABLE = torch.ops.autodeploy.position_table.default
TABLE_PREFIX = "position_table_"


class FoldPositionTablesConfig(TransformConfig):
    max_table_mb: float = Field(
        256.0, gt=0, description="Largest table (all positions below runtime.max_seq_len) folded, in MiB."
    )


def _position_input(gm: fx.GraphModule) -> fx.Node | None:
    return next((n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "position_ids"), None)


def _real_attr(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A get_attr of a buffer that has values now (computed at build, as HF's inv_freq). Never a parameter:
    weights are replaced when they load, and the table would keep the old ones."""
    try:
        return not gm.get_buffer(node.target).is_meta
    except AttributeError:  # a parameter, a submodule or a constant: not a buffer
        return False


def _foldable_op(node: fx.Node) -> bool:
    target = node.target
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return False
    if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
        return False
    # uninitialized memory (empty, new_empty, empty_like, empty_strided): no value a table could hold
    return "empty" not in target._schema.name


def _dependent_set(gm: fx.GraphModule, pos: fx.Node) -> set[fx.Node]:
    """Nodes computed from position_ids (among their inputs, directly or not) and otherwise only from real
    get_attr buffers and values computed from those alone (inv_freq.to(float32))."""
    dependent, constant = {pos}, set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and _real_attr(gm, node):
            constant.add(node)
            continue
        if node.op != "call_function" or not _foldable_op(node):
            continue
        inputs = node.all_input_nodes
        if not all(i in dependent or i in constant for i in inputs):
            continue
        (dependent if any(i in dependent for i in inputs) else constant).add(node)
    return dependent


def _row_shape(node: fx.Node, pos_shape: tuple) -> tuple[int, ...] | None:
    """The static per-position shape of a frontier value [*position_ids.shape, *row], or None."""
    v = val(node)
    if not isinstance(v, torch.Tensor) or not v.dtype.is_floating_point or v.dim() < len(pos_shape):
        return None
    lead, row = tuple(v.shape[: len(pos_shape)]), tuple(v.shape[len(pos_shape):])
    if [str(d) for d in lead] != [str(d) for d in pos_shape]:
        return None
    if not all(isinstance(d, int) for d in row):
        return None
    return row


# layout ops that leave each position's row as it is: a frontier value spelled through them (cos.unsqueeze(1) per
# layer, before match_rope) is folded at their input, and they stay as views of the lookup
_LAYOUT = (torch.ops.aten.unsqueeze.default, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
           torch.ops.aten.expand.default, torch.ops.aten._unsafe_view.default)


def _fold_point(node: fx.Node, pos_shape: tuple, dependent: set[fx.Node]) -> fx.Node | None:
    """The value to fold for a frontier node: itself when it has the per-position shape, else the first such
    value up its chain of layout ops."""
    while _row_shape(node, pos_shape) is None:
        if node.target not in _LAYOUT or not node.args or node.args[0] not in dependent:
            return None
        node = node.args[0]
    return node


def _subgraph(gm: fx.GraphModule, pos: fx.Node, dependent: set[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """A GraphModule position_ids -> outputs made of copies of the dependent nodes (and their buffers)."""
    needed: set[fx.Node] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node not in needed:
            continue
        if node is pos:
            env[node] = g.placeholder("position_ids")
        else:
            env[node] = g.node_copy(node, lambda n: env[n])
    g.output(tuple(env[o] for o in outputs))
    return fx.GraphModule(gm, g)


def _evaluate(sub: fx.GraphModule, positions: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(sub(positions))


def _on_device(sub: fx.GraphModule, device: torch.device) -> fx.GraphModule:
    """A copy of the subgraph with its buffers on `device` and its traced devices (meta) naming it. A copy: the
    one kept for WeightPlan.derive must still say meta when the weights load elsewhere later."""
    from autodeploy.export.device import retarget_device

    out = copy.deepcopy(sub).to(device)
    retarget_device(out, device)
    return out


def _table(sub: fx.GraphModule, pos_shape: tuple, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[n, L, *row]: the subgraph's outputs at every position 0 .. L-1, on `device`."""
    sub = _on_device(sub, device)
    ids = torch.arange(length, dtype=dtype, device=device).view(*([1] * (len(pos_shape) - 1)), length)
    rows = [o.reshape(length, *o.shape[len(pos_shape):]) for o in _evaluate(sub, ids)]
    return torch.stack(rows).contiguous()


def _buffer_device(sub: fx.GraphModule) -> torch.device:
    """Where the subgraph's buffers are now (the CPU for a model built on the meta device)."""
    return next((t.device for t in sub.buffers()), next((p.device for p in sub.parameters()), torch.device("cpu")))


def _exact(sub: fx.GraphModule, table: torch.Tensor, pos_shape: tuple, dtype: torch.dtype) -> list[bool]:
    """Per output: the subgraph at scattered positions (a longer and a shorter step) equals the table's rows."""
    sub = _on_device(sub, table.device)
    gen = torch.Generator().manual_seed(0)
    lead = [1] * (len(pos_shape) - 1)
    ok = [True] * table.shape[0]
    for count in (7, 3):
        ids = torch.randint(0, table.shape[1], (*lead, count), generator=gen, dtype=dtype).to(table.device)
        want = torch.ops.autodeploy.position_table(table, ids)
        for i, got in enumerate(_evaluate(sub, ids)):
            ok[i] = ok[i] and got.dtype == table.dtype and torch.equal(got, want[i])
    return ok


def _static_leading_ones(pos_shape: tuple) -> bool:
    """position_ids [1, s] / [s] / [b, s]: every dim but the last symbolic or 1."""
    return all(not isinstance(d, int) or d == 1 for d in pos_shape[:-1])


@register(Stage.CANONICALIZE, FoldPositionTablesConfig, shape_prop=True)
def apply(gm: fx.GraphModule, ctx, cfg: FoldPositionTablesConfig) -> TransformInfo:
    pos = _position_input(gm)
    pv = val(pos) if pos is not None else None
    if not isinstance(pv, torch.Tensor) or pv.dtype not in (torch.int32, torch.int64) or pv.dim() < 1:
        return TransformInfo(details={"reason": "no integer position_ids input"})
    pos_shape = tuple(pv.shape)
    if not _static_leading_ones(pos_shape):
        return TransformInfo(details={"reason": f"position_ids of shape {list(pos_shape)}"})
    dependent = _dependent_set(gm, pos)
    frontier = [n for n in gm.graph.nodes if n in dependent and n is not pos
                and any(u not in dependent for u in n.users)]
    groups: dict[tuple, list[fx.Node]] = {}
    for n in dict.fromkeys(_fold_point(n, pos_shape, dependent) for n in frontier):
        row = _row_shape(n, pos_shape) if n is not None else None
        if row is not None:
            groups.setdefault((row, val(n).dtype), []).append(n)
    length = int(ctx.recipe.runtime.max_seq_len)
    info = TransformInfo(details={"tables": 0, "values": 0, "positions": length, "skipped": []})
    for (row, dtype), outputs in groups.items():
        n_bytes = len(outputs) * length * math.prod(row) * dtype.itemsize
        names = [o.name for o in outputs]
        if n_bytes > cfg.max_table_mb * 2**20:
            info.details["skipped"].append(f"{names}: table of {n_bytes / 2**20:.0f} MiB > max_table_mb")
            continue
        sub = _subgraph(gm, pos, dependent, outputs)
        table = _table(sub, pos_shape, length, pv.dtype, _buffer_device(sub))
        exact = _exact(sub, table, pos_shape, pv.dtype)
        mixed = [o.name for o, ok in zip(outputs, exact) if not ok]
        if mixed:
            info.details["skipped"].append(f"{mixed}: not a function of each position alone")
            outputs = [o for o, ok in zip(outputs, exact) if ok]
            if not outputs:
                continue
            sub = _subgraph(gm, pos, dependent, outputs)
            table = table[[i for i, ok in enumerate(exact) if ok]].contiguous()
        _fold(gm, pos, outputs, sub, table, pos_shape, length, pv.dtype)
        info.details["tables"] += 1
        info.details["values"] += len(outputs)
    info.matches = info.details["values"]
    info.changed = info.matches > 0
    return info


def _fold(gm: fx.GraphModule, pos: fx.Node, outputs: list[fx.Node], sub: fx.GraphModule, table: torch.Tensor,
          pos_shape: tuple, length: int, pos_dtype: torch.dtype) -> None:
    """Register the table buffer (derived on the load device: WeightPlan.derive), look it up before the first
    output and read each output from the lookup."""
    index = sum(1 for name, _ in gm.named_buffers() if name.startswith(TABLE_PREFIX))
    name = f"{TABLE_PREFIX}{index}"
    weights = next(gm.parameters(), None)
    # beside the weights: on meta until they load (shape propagation must not meet a real tensor among fakes)
    gm.register_buffer(name, table.to("meta") if weights is not None and weights.is_meta else table,
                       persistent=False)  # derived, never a checkpoint tensor

    weight_plan(gm).derive(name, lambda device: _table(sub, pos_shape, length, pos_dtype, torch.device(device)))
    g = gm.graph
    with g.inserting_before(outputs[0]):
        attr = g.get_attr(name)
        looked_up = g.call_function(POSITION_TABLE, (attr, pos))  # [n, *position_ids.shape, *row]
        for i, o in enumerate(outputs):
            o.replace_all_uses_with(g.call_function(torch.ops.aten.select.int, (looked_up, 0, i)))
