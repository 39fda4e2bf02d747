"""match_moe: each transformers MoE block (router top-k + expert dispatch) -> one autodeploy::moe.

    before (batched_mm; the grouped_mm path adds sort / histc / cumsum / index_put_ around two
    grouped_mm calls, see autodeploy/patterns/moe.py):
        logits = linear(x, W_router)                                        # [t, E]
        w, ids = topk(softmax(logits), k);  w = w / w.sum(-1)               # [t, k]
        gu  = bmm(W_gu[ids.reshape(-1)], repeat_interleave(x, k)[..., None])
        hid = silu(gu.chunk(2)[0]) * gu.chunk(2)[1]
        y   = bmm(W_d[ids.reshape(-1)], hid[..., None]) * w.reshape(-1)[:, None]
        out = y.view(t, k, h).sum(1)                                        # [t, h]
    after:
        logits = linear(x, W_router)                                        # stays an ordinary op
        out = autodeploy.moe(x, logits, W_gu, W_d, b_gu, b_d, score_bias,
                             top_k=k, scoring=..., order=..., normalize=..., n_group=...,
                             topk_group=..., routed_scaling_factor=..., act=..., ...)

The router linear and shared experts stay ordinary ops (sharding and GEMM fusion see them as any
other linear). Expert weights stored transposed (GPT-OSS: [E, h, 2f]) are passed as a transpose
view, so the op always sees the logical [E, 2f, h] / [E, h, f] shapes and the checkpoint tensors
load unchanged. Blocks whose structure the walk does not recognize are left on transformers' path
(which runs correctly) and reported in the warning.
"""

from __future__ import annotations

import torch
from torch import fx

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.moe)
from autodeploy.graph import aten, is_op, val
from autodeploy.patterns.moe import MoeMatch, block_region, find_moe_blocks, mutation_escapes
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


def _transposed(graph: fx.Graph, weight: fx.Node) -> fx.Node:
    node = graph.call_function(aten.transpose.int, (weight, 1, 2))
    if val(weight) is not None:
        node.meta["val"] = val(weight).transpose(1, 2)
    return node


def _rewrite(gm: fx.GraphModule, m: MoeMatch, region: set[fx.Node]) -> None:
    graph = gm.graph
    with graph.inserting_before(m.out):
        w_gate_up = _transposed(graph, m.w_gate_up) if m.transposed else m.w_gate_up
        w_down = _transposed(graph, m.w_down) if m.transposed else m.w_down
        args = (m.x, m.router_logits, w_gate_up, w_down, m.b_gate_up, m.b_down, m.score_bias)
        moe = graph.call_function(torch.ops.autodeploy.moe.default, args, dict(m.config))
    moe.meta["val"] = m.out.meta["val"]
    for key in ("nn_module_stack", "stack_trace"):  # graph dumps and errors point at the HF block
        if key in m.out.meta:
            moe.meta[key] = m.out.meta[key]
    m.out.replace_all_uses_with(moe)
    # The dispatch region holds in-place ops (div_, add_, index_put_, scatter_) that dead-code
    # elimination keeps as side effects; nothing outside reads them (checked), so erase them here.
    for node in region:
        for user in list(node.users):
            if is_op(user, aten._assert_tensor_metadata):
                graph.erase_node(user)
    for node in reversed(list(graph.nodes)):
        if node in region and not node.users:
            graph.erase_node(node)


def _declared_moe(ctx) -> dict | None:
    if ctx.arch is not None:
        return ctx.arch.moe
    if ctx.hf_config is not None:
        from autodeploy.models.detect import detect_architecture

        return detect_architecture(ctx.hf_config).moe
    return None


@register(Stage.CANONICALIZE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    matches, reasons = find_moe_blocks(gm)
    done = {"batched_mm": 0, "grouped_mm": 0}
    for m in matches:
        region = block_region(m)
        escaped = mutation_escapes(region, m.out)
        if escaped is not None:
            reasons.append(f"{escaped}: in-place op whose result is also read outside the MoE block")
            continue
        _rewrite(gm, m, region)
        done[m.path] += 1
    matched = sum(done.values())
    warning = None
    declared = _declared_moe(ctx)
    if reasons:
        warning = (f"{len(reasons)} expert block(s) left on transformers' path (they still run correctly): "
                   f"{reasons[0]}")
    elif matched == 0 and declared:
        warning = (f"the config declares {declared['experts']} experts but the graph has no expert GEMMs "
                   "(bmm / grouped_mm over 3-D expert weights) to match; the model runs un-rewritten")
    return TransformInfo(matches=matched, changed=matched > 0, warning=warning,
                         details={k: v for k, v in done.items() if v} | {"unmatched": reasons})
