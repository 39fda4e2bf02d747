"""The one thin layer over FX subgraph matching that every pattern family uses.

A pattern is a pair of plain functions plus example inputs:

    def rmsnorm_pattern(x, weight, eps):          # HF's spelling, plain PyTorch
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def rmsnorm_replacement(x, weight, eps):      # the canonical op (torch.ops calls only)
        return torch.ops.autodeploy.rmsnorm.default(x, weight, eps, False)

    PATTERNS = [Pattern("llama", rmsnorm_pattern, rmsnorm_replacement,
                        example=lambda sz, dt: dict(x=randn(sz.b, sz.s, sz.h, dtype=dt), weight=..., eps=EPS))]
    matches = apply_patterns(gm, PATTERNS, context=ctx)

How a search function becomes a pattern graph (lazily, once per process):
- it is traced with `make_fx(pre_dispatch=True)`, the IR torch.export produces, once per dtype in
  `Pattern.dtypes`, and tidied by `cleanup_export` exactly like the model graph (in fp32 the no-op
  casts vanish, in bf16 they stay: one variant each);
- it is traced twice, at two example sizes (`SIZES`): a literal that differs between the traces is
  shape-derived (view sizes, slice bounds) and matches anything; a literal that does not (dims,
  dtypes, the -1 of a view) must match exactly;
- a non-tensor example input (eps, scale) is a *scalar*: give it a value found nowhere else in the
  pattern; wherever it appears the graph's literal (or SymInt node) is bound to that name.

Matching walks backwards from each pattern output over normalized arguments (positional, keyword
and default values agree), tries both operand orders of add/mul, and keeps a match only when every
inner node's users are inside it. A pattern with several outputs (RoPE of q and k) finds the later
outputs near the nodes already matched. `check(match)` then decides: False rejects, True accepts,
a dict accepts and adds keyword arguments for the replacement. The replacement runs on FX proxies,
inserted where the first output was (or right after the last input it reads, if that is later);
new nodes get `meta["val"]` from the fake tensors of their inputs, and the first output's
`nn_module_stack` / `stack_trace`.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import fx

from autodeploy.graph import aten

log = logging.getLogger(__name__)

# Two example sizes with no dimension in common; b, s: batch / seq; n, n_kv: heads; d: head dim;
# r: rotary dim (< d for partial rotary); h: hidden; f: MLP width.
SIZES = (
    SimpleNamespace(b=2, s=8, n=4, n_kv=2, d=16, r=8, h=48, f=64),
    SimpleNamespace(b=3, s=5, n=9, n_kv=3, d=12, r=6, h=36, f=40),
)

_COMMUTATIVE = (aten.add.Tensor, aten.mul.Tensor)
_EXACT, _WILD = "exact", "wild"
_MISSING = object()


@dataclasses.dataclass
class Pattern:
    """One spelling of a family: `search` (HF's code) -> `replace` (canonical op)."""

    name: str
    search: Callable[..., Any]
    replace: Callable[..., Any]
    example: Callable[[SimpleNamespace, torch.dtype], dict[str, Any]]  # (sizes, dtype) -> inputs by name
    check: Callable[["Match"], bool | dict] | None = None
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)  # dtype -> _Compiled


@dataclasses.dataclass
class Match:
    """A match found in the graph, handed to `check` and to the caller."""

    pattern: Pattern
    inputs: dict[str, Any]  # argument name -> graph Node (tensors, SymInts) or literal (scalars)
    nodes: dict[fx.Node, fx.Node]  # pattern node -> graph node
    outputs: list[fx.Node]  # graph nodes the pattern's outputs matched
    context: Any = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the check added for the replacement

    def val(self, name: str):
        """The FakeTensor (or SymInt) of input `name`, or the literal itself."""
        v = self.inputs[name]
        return v.meta.get("val") if isinstance(v, fx.Node) else v

    def graph_nodes(self, op) -> list[fx.Node]:
        """Matched graph nodes whose pattern node calls `op` (an OpOverload), in pattern order."""
        return [g for p, g in self.nodes.items() if p.op == "call_function" and p.target is op]


# ---- pattern compilation ---------------------------------------------------------------------


def _norm_args(node: fx.Node) -> list[Any]:
    """Arguments in schema order with defaults filled in, so keyword / positional spellings agree."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        out = []
        for i, arg in enumerate(target._schema.arguments):
            if not arg.kwarg_only and i < len(node.args):
                out.append(node.args[i])
            elif arg.name in node.kwargs:
                out.append(node.kwargs[arg.name])
            else:
                out.append(arg.default_value if arg.has_default_value() else _MISSING)
        return out
    return list(node.args) + list(node.kwargs.values())


def _spec(a1: Any, a2: Any, scalars: dict[str, Any]) -> Any:
    """How to compare one literal argument: exact, wildcard, or bind to a scalar name."""
    if isinstance(a1, fx.Node):
        return None
    if isinstance(a1, (list, tuple)):
        if not isinstance(a2, (list, tuple)) or len(a1) != len(a2):
            return _WILD
        return [_spec(x, y, scalars) for x, y in zip(a1, a2)]
    for name, value in scalars.items():
        if type(a1) is type(value) and a1 == value:
            return ("bind", name)
    if type(a1) is not type(a2) or a1 != a2:
        return _WILD
    return _EXACT


def _trace(pattern: Pattern, sizes: SimpleNamespace, dtype: torch.dtype):
    from torch.fx.experimental.proxy_tensor import make_fx

    from autodeploy.transforms import cleanup_export

    example = pattern.example(sizes, dtype)
    tensor_names = [k for k, v in example.items() if isinstance(v, torch.Tensor)]
    scalars = {k: v for k, v in example.items() if not isinstance(v, torch.Tensor)}

    def fn(*tensors):
        return pattern.search(**dict(zip(tensor_names, tensors)), **scalars)

    gm = make_fx(fn, pre_dispatch=True, tracing_mode="fake")(*[example[k] for k in tensor_names])
    cleanup_export.apply(gm, None, None)  # the model graph went through the same tidy-up
    gm.graph.eliminate_dead_code()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = dict(zip(placeholders, tensor_names))
    for p in placeholders:
        if not p.users:
            raise ValueError(f"pattern {pattern.name}: input '{names[p]}' is unused")
    return gm, names, scalars


@dataclasses.dataclass
class _Compiled:
    pattern: Pattern
    graph: fx.Graph
    inputs: dict[fx.Node, str]  # placeholder -> argument name
    outputs: list[fx.Node]
    specs: dict[fx.Node, list]  # call node -> per-argument comparison spec
    size: int


def _compile_one(pattern: Pattern, dtype: torch.dtype) -> _Compiled:
    (g1, names, scalars), (g2, _, _) = (_trace(pattern, sz, dtype) for sz in SIZES)
    n1 = [n for n in g1.graph.nodes if n.op == "call_function"]
    n2 = [n for n in g2.graph.nodes if n.op == "call_function"]
    if [n.target for n in n1] != [n.target for n in n2]:
        raise ValueError(f"pattern {pattern.name}: the trace changes with the example sizes")
    specs = {a: [_spec(x, y, scalars) for x, y in zip(_norm_args(a), _norm_args(b))] for a, b in zip(n1, n2)}
    found = {s[1] for spec in specs.values() for s in _flat(spec) if isinstance(s, tuple)}
    if set(scalars) - found:
        raise ValueError(f"pattern {pattern.name}: scalar(s) {sorted(set(scalars) - found)} not found in the trace")
    out = next(n for n in g1.graph.nodes if n.op == "output").args[0]
    outputs = list(out) if isinstance(out, (list, tuple)) else [out]
    return _Compiled(pattern, g1.graph, names, outputs, specs, len(n1))


def _stored_or_compiled(pattern: Pattern, dtype: torch.dtype) -> _Compiled:
    """The variant from the disk cache (compiled_cache.py), else traced now and stored."""
    from autodeploy.patterns import compiled_cache

    store, name = compiled_cache.store(), compiled_cache.entry_name(pattern, dtype)
    if store is None or name is None:
        return _compile_one(pattern, dtype)
    hit = store.get(name)
    if hit is not None:
        return _Compiled(pattern, *hit)
    c = _compile_one(pattern, dtype)
    store.put(name, c.graph, c.inputs, c.outputs, c.specs, c.size)
    return c


def _flat(spec):
    if isinstance(spec, list):
        for s in spec:
            yield from _flat(s)
    else:
        yield spec


def _signature(c: _Compiled) -> str:
    """Structure, literals and specs: equal signatures match the same graphs."""
    index = {n: i for i, n in enumerate(c.graph.nodes)}
    rows = []
    for n in c.graph.nodes:
        if n.op == "call_function":
            args = fx.node.map_arg(_norm_args(n), lambda a: f"%{index[a]}")
            rows.append(f"{n.target}{args}{c.specs[n]}")
    return "\n".join(rows)


def compiled(pattern: Pattern, dtypes=None) -> list[_Compiled]:
    """The pattern's graph variants for `dtypes` (default: all of `pattern.dtypes`), built on first use.

    Variants whose traces agree are kept once; the longest comes first, since a shorter one (fp32,
    casts gone) can fit inside a longer one.
    """
    variants, seen = [], set()
    for dtype in pattern.dtypes:
        if dtypes is not None and dtype not in dtypes:
            continue
        if dtype not in pattern._compiled:
            pattern._compiled[dtype] = _stored_or_compiled(pattern, dtype)
        c = pattern._compiled[dtype]
        sig = _signature(c)
        if sig not in seen:
            seen.add(sig)
            variants.append(c)
    return sorted(variants, key=lambda c: -c.size)


def graph_dtypes(gm: fx.GraphModule) -> set[torch.dtype]:
    """Floating dtypes of the graph's inputs and parameters (plus fp32): the pattern variants worth tracing."""
    found = {torch.float32}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta.get("val")
        elif n.op == "get_attr":
            v = gm
            for part in str(n.target).split("."):
                v = getattr(v, part, None)
        else:
            continue
        if isinstance(v, torch.Tensor) and v.dtype.is_floating_point:
            found.add(v.dtype)
    return found


# ---- matching --------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.nodes: dict[fx.Node, fx.Node] = {}
        self.used: set[fx.Node] = set()
        self.binds: dict[str, Any] = {}

    def copy(self) -> "_State":
        s = _State()
        s.nodes, s.used, s.binds = dict(self.nodes), set(self.used), dict(self.binds)
        return s

    def restore(self, other: "_State") -> None:
        self.nodes, self.used, self.binds = other.nodes, other.used, other.binds

    def bind(self, name: str, value: Any) -> bool:
        if name in self.binds:
            old = self.binds[name]
            if isinstance(old, fx.Node) or isinstance(value, fx.Node):
                return old is value
            return type(old) is type(value) and old == value
        self.binds[name] = value
        return True


class _Matcher:
    def __init__(self, c: _Compiled) -> None:
        self.c = c

    def node(self, pn: fx.Node, gn: Any, st: _State) -> bool:
        if pn.op == "placeholder":
            return st.bind(self.c.inputs[pn], gn)
        if pn in st.nodes:
            return st.nodes[pn] is gn
        if not isinstance(gn, fx.Node) or gn.op != "call_function" or gn.target != pn.target or gn in st.used:
            return False
        snap = st.copy()
        st.nodes[pn] = gn
        st.used.add(gn)
        pargs, gargs, spec = _norm_args(pn), _norm_args(gn), self.c.specs[pn]
        if len(pargs) == len(gargs):
            inner = st.copy()
            if self.args(pargs, gargs, spec, st):
                return True
            if pn.target in _COMMUTATIVE and isinstance(gargs[0], fx.Node) and isinstance(gargs[1], fx.Node):
                st.restore(inner)
                if self.args(pargs, [gargs[1], gargs[0]] + gargs[2:], spec, st):
                    return True
        st.restore(snap)
        return False

    def args(self, pargs: list, gargs: list, spec: list, st: _State) -> bool:
        for p, g, s in zip(pargs, gargs, spec):
            if not self.arg(p, g, s, st):
                return False
        return True

    def arg(self, p: Any, g: Any, s: Any, st: _State) -> bool:
        if isinstance(p, fx.Node):
            return self.node(p, g, st)
        if s == _WILD:
            return True
        if isinstance(s, tuple):  # ("bind", name)
            return st.bind(s[1], g)
        if isinstance(s, list):
            return isinstance(g, (list, tuple)) and len(g) == len(p) and self.args(list(p), list(g), s, st)
        return not isinstance(g, fx.Node) and type(g) is type(p) and g == p

    def contained(self, st: _State) -> bool:
        outputs = set(self.c.outputs)
        for pn, gn in st.nodes.items():
            if pn not in outputs and any(u not in st.used for u in gn.users):
                return False
        return True

    def outputs(self, i: int, st: _State) -> bool:
        """Match pattern outputs i.. given the state so far (which already holds output 0)."""
        if i == len(self.c.outputs):
            return self.contained(st)
        pn = self.c.outputs[i]
        if pn in st.nodes:
            return self.outputs(i + 1, st)
        for cand in _nearby(st, pn.target, self.c.size):
            snap = st.copy()
            if self.node(pn, cand, st) and self.outputs(i + 1, st):
                return True
            st.restore(snap)
        return False


def _nearby(st: _State, target, depth: int) -> list[fx.Node]:
    """Nodes calling `target` within `depth` user-steps of the nodes matched so far, nearest first."""
    start = list(st.used) + [v for v in st.binds.values() if isinstance(v, fx.Node)]
    seen, frontier, found = set(start), start, []
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u not in seen:
                    seen.add(u)
                    nxt.append(u)
                    if u.op == "call_function" and u.target == target and u not in st.used:
                        found.append(u)
        frontier = nxt
    return found


# ---- replacement -----------------------------------------------------------------------------


def _node_vals(nodes: list[fx.Node]) -> None:
    """Set meta['val'] of new nodes by running their targets on the fake values of their inputs."""
    from torch._guards import detect_fake_mode

    def value(a):
        return a.meta.get("val", _MISSING) if isinstance(a, fx.Node) else a

    for n in nodes:
        args = fx.node.map_aggregate(n.args, value)
        kwargs = fx.node.map_aggregate(n.kwargs, value)
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(a is _MISSING for a in leaves):
            log.debug("no fake value for %s: an input has none", n.format_node())
            continue
        mode = detect_fake_mode(leaves)
        if n.target is operator.getitem or mode is None:
            n.meta["val"] = n.target(*args, **kwargs)
        else:
            with mode:
                n.meta["val"] = n.target(*args, **kwargs)


def _replace(gm: fx.GraphModule, m: Match, extra: dict[str, Any]) -> bool:
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    kwargs = {**m.inputs, **extra}
    inputs = [v for v in torch.utils._pytree.tree_leaves(list(kwargs.values())) if isinstance(v, fx.Node)]
    last = max(inputs, key=order.__getitem__)
    first_out = min(m.outputs, key=order.__getitem__)
    matched = set(m.nodes.values())
    users = [u for o in m.outputs for u in o.users if u not in matched]
    if order[last] < order[first_out]:
        # Where the pattern's first output was: anything it read in place (DeepSeek fills its key
        # buffer with copy_) has happened by then.
        anchor = first_out
    elif not users or min(order[u] for u in users) > order[last]:
        anchor = last.next
    else:
        log.debug("pattern %s: an output is used before the last input is computed; skipped", m.pattern.name)
        return False
    tracer = fx.proxy.GraphAppendingTracer(graph)
    wrap = lambda v: fx.Proxy(v, tracer) if isinstance(v, fx.Node) else v  # noqa: E731
    before = anchor.prev
    with graph.inserting_before(anchor):
        result = m.pattern.replace(**{k: torch.utils._pytree.tree_map(wrap, v) for k, v in kwargs.items()})
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(m.outputs):
        raise ValueError(
            f"pattern {m.pattern.name}: replacement returns {len(results)} values, the pattern {len(m.outputs)}"
        )
    new_nodes, n = [], before.next
    while n is not anchor:
        new_nodes.append(n)
        n = n.next
    keep = {k: m.outputs[0].meta[k] for k in ("nn_module_stack", "stack_trace") if k in m.outputs[0].meta}
    for n in new_nodes:
        n.meta.update(keep)
    _node_vals(new_nodes)
    for old, new in zip(m.outputs, results):
        old.replace_all_uses_with(new.node if isinstance(new, fx.Proxy) else new)
    for gn in sorted(matched, key=order.__getitem__, reverse=True):
        if not gn.users:
            graph.erase_node(gn)
    return True


def find_matches(gm: fx.GraphModule, pattern: Pattern, context: Any = None) -> list[Match]:
    """Every non-overlapping match of `pattern` that its check accepts (graph unchanged)."""
    out, taken = [], set()
    for c in compiled(pattern, graph_dtypes(gm)):
        matcher = _Matcher(c)
        for gn in list(gm.graph.nodes):
            if gn in taken or gn.op != "call_function" or gn.target != c.outputs[0].target:
                continue
            st = _State()
            if not (matcher.node(c.outputs[0], gn, st) and matcher.outputs(1, st)) or st.used & taken:
                continue
            m = Match(pattern, dict(st.binds), dict(st.nodes), [st.nodes[o] for o in c.outputs], context)
            verdict = pattern.check(m) if pattern.check is not None else True
            if verdict is False or verdict is None:
                continue
            m.extra = verdict if isinstance(verdict, dict) else {}
            taken |= st.used
            out.append(m)
    return out


def apply_patterns(gm: fx.GraphModule, patterns: list[Pattern], context: Any = None) -> list[Match]:
    """Rewrite every accepted match of each pattern, in list order: put specific spellings first."""
    done: list[Match] = []
    for pattern in patterns:
        for m in find_matches(gm, pattern, context):
            if _replace(gm, m, m.extra):
                done.append(m)
    return done
