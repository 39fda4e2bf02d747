"""Facts read off an exported graph, to check what the config claims.

    attention sites   SDPA calls, or eager softmaxes over 4-d scores [b, h, q, k]
    heads             q [b, n_heads, s, d] at each site; KV heads from the repeat_kv expand
                      [b, n_kv, n_rep, s, d] upstream of the key, else the key's own dim 1
    norms             rsqrt (RMSNorm) and layer_norm counts; `1 + weight` adds (Gemma's RMSNorm)
    gated MLP         an activation (silu / gelu / sigmoid) multiplied by another tensor
    MoE               topk calls and their k; 3-d parameters [experts, ...]
    RoPE              cos / sin present; theta implied by the inv_freq buffers feeding them
    sinks, softcaps   a cat of extra logits / a tanh just before an attention softmax or the output

Everything is found by op identity and tensor shapes (node.meta["val"]), never by node names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import fx

from autodeploy.graph import aten, get_attr_tensor, is_op, nodes_of, val

ACTIVATIONS = (aten.silu, aten.gelu, aten.sigmoid, aten.relu)
# ops that only move or reshape a tensor: walked through when tracing the key back to repeat_kv
_VIEWS = (aten.transpose, aten.reshape, aten.view, aten.expand, aten.unsqueeze, aten.contiguous, aten.clone,
          aten.permute, aten._unsafe_view)


@dataclass
class GraphFacts:
    attention_sites: int = 0
    q_heads: set[int] = field(default_factory=set)
    kv_heads: set[int] = field(default_factory=set)
    q_head_dims: set[int] = field(default_factory=set)
    v_head_dims: set[int] = field(default_factory=set)
    rmsnorm_sites: int = 0  # rsqrt calls
    layernorm_sites: int = 0
    one_plus_weight_sites: int = 0  # `1 + weight` (Gemma's RMSNorm scale)
    gate_sites: int = 0
    topk_ks: list[int] = field(default_factory=list)
    expert_dims: set[int] = field(default_factory=set)  # leading dims of 3-d parameters
    has_rotary: bool = False
    rope_thetas: list[float] = field(default_factory=list)
    sink_sites: int = 0
    attn_softcap_sites: int = 0
    logit_softcap: bool = False


def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _find_near(start: fx.Node, depth: int, pred: Callable[[fx.Node], bool], down: bool = False) -> fx.Node | None:
    """Breadth-first over inputs (over users when `down`), up to `depth` hops: the first node satisfying `pred`."""
    frontier, seen = [start], {start}
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for inp in (list(node.users) if down else _inputs(node)):
                if inp in seen:
                    continue
                if pred(inp):
                    return inp
                seen.add(inp)
                nxt.append(inp)
        frontier = nxt
    return None


def _shape(node) -> tuple | None:
    v = val(node)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _int(x) -> int | None:
    return int(x) if isinstance(x, int) or (isinstance(x, torch.SymInt) and not x.node.has_free_symbols) else None


def _attention_sites(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node, fx.Node | None, fx.Node]]:
    """(q, k, v or None, anchor) per attention: SDPA calls, or 4-d softmaxes and their QK^T matmul."""
    sites = []
    for node in nodes_of(gm, aten.scaled_dot_product_attention):
        sites.append((node.args[0], node.args[1], node.args[2], node))
    for node in nodes_of(gm, [aten.softmax, aten._softmax]):
        shape = _shape(node)
        if shape is None or len(shape) != 4:
            continue  # a router softmax is 2-d [tokens, experts]
        qk = _find_near(node, 6, lambda n: is_op(n, [aten.matmul, aten.bmm]) and len(_shape(n) or ()) == 4)
        if qk is not None:
            # the probabilities reach the PV matmul (through dropout, or a slice dropping sink columns):
            # its second input is v [b, h, s, d_v]
            pv = _find_near(node, 5, lambda n: is_op(n, [aten.matmul, aten.bmm]), down=True)
            sites.append((qk.args[0], qk.args[1], pv.args[1] if pv is not None else None, node))
    return sites


def _kv_heads(key: fx.Node) -> int | None:
    """KV heads before repeat_kv: the expand to [b, n_kv, n_rep, s, d] upstream of the key, if any
    (an eager key is transposed to [b, h, d, s]: dim 1 is still the heads)."""
    node = key
    for _ in range(6):
        shape = _shape(node)
        if is_op(node, aten.expand) and shape is not None and len(shape) == 5:
            return _int(shape[1])
        if not is_op(node, _VIEWS) or not isinstance(node.args[0], fx.Node):
            break
        node = node.args[0]
    shape = _shape(key)
    return _int(shape[1]) if shape is not None and len(shape) == 4 else None


def _attr(gm: fx.GraphModule, node: fx.Node):
    return get_attr_tensor(gm, node) if node.op == "get_attr" else None


def _is_param(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_attr(gm, node), torch.nn.Parameter)


def _one_plus_weight(gm: fx.GraphModule, node: fx.Node) -> bool:
    if not is_op(node, aten.add) or len(node.args) < 2:
        return False
    a, b = node.args[0], node.args[1]
    scalar, tensor = (a, b) if not isinstance(a, fx.Node) else (b, a)
    if not isinstance(tensor, fx.Node) or scalar != 1:
        return False
    return _is_param(gm, tensor) or _find_near(tensor, 2, lambda n: _is_param(gm, n)) is not None


def _gate_site(act: fx.Node) -> bool:
    """act(x) * y with y another tensor (not x itself: that would be silu spelled out)."""
    for user in act.users:
        if is_op(user, aten.mul):
            others = [a for a in user.args if a is not act]
            if any(isinstance(o, fx.Node) and o is not act.args[0] for o in others):
                return True
    return False


def _rope_thetas(gm: fx.GraphModule) -> list[float]:
    """theta implied by each inv_freq buffer feeding cos: inv_freq[i] = theta^(-2i/d), d = 2 len."""
    thetas = []
    for cos in nodes_of(gm, aten.cos):
        frontier, seen = [cos], {cos}
        for _ in range(10):
            nxt = []
            for node in frontier:
                for inp in _inputs(node):
                    if inp in seen:
                        continue
                    seen.add(inp)
                    nxt.append(inp)
                    t = _attr(gm, inp)
                    if isinstance(t, torch.Tensor) and not t.is_meta and t.ndim == 1 and t.numel() >= 2:
                        thetas.append(float(t[1].double() ** (-t.numel())))
            frontier = nxt
    return thetas


def graph_facts(gm: fx.GraphModule) -> GraphFacts:
    f = GraphFacts()
    sites = _attention_sites(gm)
    f.attention_sites = len(sites)
    for q, k, v, anchor in sites:
        eager = not is_op(anchor, aten.scaled_dot_product_attention)
        qs, ks = _shape(q), _shape(k)
        if qs is not None and len(qs) == 4:
            f.q_heads.add(_int(qs[1]))
            f.q_head_dims.add(_int(qs[3]))
        if ks is not None:
            f.kv_heads.add(_kv_heads(k))
        vs = _shape(v) if v is not None else None
        if vs is not None and len(vs) == 4:
            f.v_head_dims.add(_int(vs[3]))
        if eager:
            cat4 = _find_near(anchor, 2, lambda n: is_op(n, aten.cat) and len(_shape(n) or ()) == 4)
            f.sink_sites += cat4 is not None
            f.attn_softcap_sites += _find_near(anchor, 4, lambda n: is_op(n, aten.tanh)) is not None
    f.rmsnorm_sites = len(nodes_of(gm, aten.rsqrt))
    f.layernorm_sites = len(nodes_of(gm, [aten.layer_norm, aten.native_layer_norm]))
    f.one_plus_weight_sites = sum(_one_plus_weight(gm, n) for n in gm.graph.nodes)
    f.gate_sites = sum(_gate_site(n) for n in nodes_of(gm, ACTIVATIONS))
    f.topk_ks = [_int(n.args[1]) for n in nodes_of(gm, aten.topk)]
    f.expert_dims = {int(p.shape[0]) for p in gm.parameters() if p.ndim == 3}
    f.has_rotary = bool(nodes_of(gm, aten.cos)) and bool(nodes_of(gm, aten.sin))
    f.rope_thetas = _rope_thetas(gm)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    f.logit_softcap = _find_near(output, 4, lambda n: is_op(n, aten.tanh)) is not None
    return f
