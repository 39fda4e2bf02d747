"""fuse_rope_cached_attention: RoPE whose outputs feed only a cached attention joins it in one op.

    before:  q [1, T, n, d] ──┐                        ┌─ [0] ─ reshape [T, n, d] ──┐
             k [1, T, n_kv, d] ┴─ autodeploy.rope(…, cos, sin, interleaved) ─┤         autodeploy.cached_attention(q, k, v, …)
                                                       └─ [1] ─ reshape [T, n_kv, d] ┘
    after:   q ─ reshape [T, n, d] ──┐
             k ─ reshape [T, n_kv, d] ┼─ autodeploy.cached_attention_rope(q, k, v, …, cos [T, d_rot], sin, interleaved, …)
             cos, sin ─ reshape [T, d_rot]

Runs right after insert_kv_cache (Stage.CACHE), on its output. Per decoder layer the unfused decode
step launches rope, the KV-cache write, the paged decode kernel and its split-K merge: four kernels
of ~2 us each on an H100 for a few KB of work. The fused op's Triton backend does all four in one
launch at decode (backends/triton/paged_attention_decode_rope.py); its reference is the unfused
pair, so the CPU path's numerics do not change.

The rope node may already be a backend twin (select_backends runs in Stage.FUSE, before caching:
triton_rope, rope_tuned, rope_compiled): all share rope's schema and meaning. A site is fused only
when the two rope outputs reach the attention's q and k through view-like ops alone, each with no
other user, and cos / sin cover the same [b, s] tokens as q (no broadcast batch), with an even rotary
dim: what the fused kernel takes. Anything else is left as it is.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

import autodeploy.transforms.insert_kv_cache  # noqa: F401  (registers first: this transform reads its output)
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

CACHED_ATTENTION = torch.ops.autodeploy.cached_attention.default
FUSED = torch.ops.autodeploy.cached_attention_rope.default
_VIEWS = (aten.reshape.default, aten.view.default, aten._unsafe_view.default, aten.contiguous.default)


def _rope_ops() -> tuple:
    """autodeploy::rope and whichever of its same-schema backend twins exist in this process."""
    ops = [torch.ops.autodeploy.rope.default]
    for name in ("triton_rope", "rope_tuned", "rope_compiled"):
        packet = getattr(torch.ops.autodeploy, name, None)
        if packet is not None:
            ops.append(packet.default)
    return tuple(ops)


def _dims(t: torch.Tensor) -> tuple[Any, ...]:
    """Shape as comparable values: symbolic dims by their expression (no guards added)."""
    return tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in t.shape)


def _rope_output(x: Any, ropes: tuple) -> tuple[fx.Node, int] | None:
    """(rope node, output index) when x is rope's output seen through single-user views, else None."""
    while isinstance(x, fx.Node) and is_op(x, _VIEWS) and len(x.users) == 1:
        x = x.args[0]
    if not (isinstance(x, fx.Node) and x.target is operator.getitem and len(x.users) == 1):
        return None
    rope = x.args[0]
    if not (isinstance(rope, fx.Node) and is_op(rope, ropes)):
        return None
    return rope, x.args[1]


def _site(attn: fx.Node, ropes: tuple) -> fx.Node | None:
    """The rope node to fuse into `attn`, or None."""
    a = bound_args(attn)
    q_src, k_src = _rope_output(a["q"], ropes), _rope_output(a["k"], ropes)
    if q_src is None or k_src is None or q_src != (k_src[0], 0) or k_src[1] != 1:
        return None
    rope = q_src[0]
    if len(rope.users) != 2:  # the two getitems just checked
        return None
    r = bound_args(rope)
    q, k, cos, sin = (val(r[name]) for name in ("q", "k", "cos", "sin"))
    if not all(isinstance(t, torch.Tensor) for t in (q, k, cos, sin)) or q.dim() != 4 or cos.dim() != 3:
        return None
    d_rot = int(cos.shape[-1])
    if _dims(cos) != _dims(sin) or _dims(cos)[:2] != _dims(q)[:2] or d_rot % 2 or d_rot > int(q.shape[-1]):
        return None
    return rope


def _fuse(gm: fx.GraphModule, attn: fx.Node, rope: fx.Node) -> None:
    g = gm.graph
    a, r = bound_args(attn), bound_args(rope)
    q, k, cos = val(r["q"]), val(r["k"]), val(r["cos"])  # [B, S, n, d], [B, S, n_kv, d], [B, S, d_rot]
    n, n_kv, d, d_rot = int(q.shape[2]), int(k.shape[2]), int(q.shape[3]), int(cos.shape[-1])
    with g.inserting_before(attn):
        q2 = g.call_function(aten.reshape.default, (r["q"], [-1, n, d]))  # [T, n, d]
        k2 = g.call_function(aten.reshape.default, (r["k"], [-1, n_kv, d]))  # [T, n_kv, d]
        cos2 = g.call_function(aten.reshape.default, (r["cos"], [-1, d_rot]))  # [T, d_rot]
        sin2 = g.call_function(aten.reshape.default, (r["sin"], [-1, d_rot]))  # [T, d_rot]
        args = (q2, k2, a["v"], a["k_cache"], a["v_cache"], a["seq_lens"], a["cu_seqlens"], a["input_pos"],
                a["cache_lens"], a["page_table"], a["slot_mapping"], cos2, sin2, bool(r["interleaved"]), a["sinks"],
                a["scale"], a["sliding_window"], a["logit_softcap"])
        fused = g.call_function(FUSED, args)  # [T, n, d_v]
    # fake values by hand (views of the inputs'; the op's is the attention's): no whole-graph propagation
    for node, src, shape in ((q2, q, (-1, n, d)), (k2, k, (-1, n_kv, d)), (cos2, cos, (-1, d_rot)),
                             (sin2, val(r["sin"]), (-1, d_rot))):
        node.meta["val"] = src.reshape(shape)
    fused.meta.update({k_: v_ for k_, v_ in attn.meta.items() if k_ in ("nn_module_stack", "stack_trace", "val")})
    attn.replace_all_uses_with(fused)
    g.erase_node(attn)  # rope and its views are dead now: the pipeline's cleanup removes them


@register(Stage.CACHE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    ropes = _rope_ops()
    attns = nodes_of(gm, CACHED_ATTENTION)
    sites = [(attn, rope) for attn in attns if (rope := _site(attn, ropes)) is not None]
    for attn, rope in sites:
        _fuse(gm, attn, rope)
    # not a warning: MLA (DeepSeek) rotates only part of q and concatenates it first, by design
    left = len(nodes_of(gm, ropes)) - len(sites)  # counted before cleanup: the fused sites' ropes are still there
    return TransformInfo(matches=len(sites), changed=bool(sites), details={"ropes_left": left})
