"""Reading an MoE router off the graph: (weights [t, k], ids [t, k]) back to the router logits.

    Mixtral / Qwen:  w, ids = topk(softmax(logits), k);  [w /= w.sum(-1)]
    GPT-OSS:         v, ids = topk(logits, k);  w = softmax(v)
    DeepSeek-V3:     s = sigmoid(logits); c = s + bias; c = c.masked_fill(~group_mask(c), -inf)
                     ids = topk(c, k).indices; w = s.gather(1, ids); w /= w.sum(-1) + eps; w *= scale

`read_router` returns the logits node, the selection bias (DeepSeek-V3) and the routing keyword
arguments of autodeploy::moe; it raises NoMatch on any other spelling.
"""

from __future__ import annotations

import operator
from typing import Any

from torch import fx

from autodeploy.graph import aten, is_op, val
from autodeploy.patterns.walk import (ADDS, CASTS, MULS, RESHAPES, SOFTMAX, NoMatch, getitem_of, is_param, last_dim,
                                      need, peel, scalar_arg)


def _scores(node: fx.Node) -> tuple[str, fx.Node]:
    """softmax(logits, -1) / sigmoid(logits) -> (scoring, logits with casts peeled)."""
    if is_op(node, SOFTMAX) and last_dim(node, node.args[1]):
        return "softmax", peel(node.args[0], CASTS)
    if is_op(node, aten.sigmoid):
        return "sigmoid", peel(node.args[0], CASTS)
    raise NoMatch(f"{node}: router scores are not softmax / sigmoid of the logits")


def _group_limit(sel: fx.Node) -> tuple[fx.Node, int, int]:
    """masked_fill(c, ~group_mask(c), -inf) -> (c, n_group, topk_group), DeepSeek-V3's spelling."""
    choice, mask = sel.args[0], sel.args[1]
    need(sel.args[2] == float("-inf"), f"{sel}: group mask fills {sel.args[2]}, not -inf")
    need(is_op(mask, (aten.bitwise_not, aten.logical_not)), f"{sel}: group mask is not a negation")
    scatter = peel(mask.args[0], CASTS + RESHAPES + (aten.expand, aten.unsqueeze))
    need(is_op(scatter, (aten.scatter, aten.scatter_)) and scatter.args[1] in (1, -1), f"{scatter}: not the group scatter")
    group_topk = getitem_of(scatter.args[2], 1, (aten.topk,))
    group_scores = group_topk.args[0]  # [t, G] = sum of the top-2 choice scores in each group
    need(is_op(group_scores, aten.sum.dim_IntList), f"{group_scores}: group scores are not a sum")
    inner = getitem_of(group_scores.args[0], 0, (aten.topk,))
    need(inner.args[1] == 2, f"{inner}: group score sums the top {inner.args[1]}, not the top 2")
    grouped = inner.args[0]
    need(is_op(grouped, RESHAPES) and grouped.args[0] is choice, f"{grouped}: group view is not of the choice scores")
    n_group = int(val(grouped).shape[-2])
    return choice, n_group, int(group_topk.args[1])


def read_router(weights: fx.Node, ids: fx.Node) -> tuple[fx.Node, fx.Node | None, dict[str, Any]]:
    """(weights [t, k], ids [t, k]) -> (router logits, score bias or None, routing kwargs of the moe op)."""
    topk = getitem_of(ids, 1, (aten.topk,))
    k = topk.args[1]
    need(last_dim(topk.args[0], topk.args[2] if len(topk.args) > 2 else -1), f"{topk}: top-k not over experts")
    need(len(topk.args) <= 3 or topk.args[3] is True, f"{topk}: smallest-k routing")
    cfg: dict[str, Any] = dict(top_k=int(k), scoring="softmax", order="softmax_then_topk", normalize=False,
                               n_group=1, topk_group=1, routed_scaling_factor=1.0)
    w = peel(weights, CASTS)
    while True:  # peel the post-processing of the k weights: scaling, normalization, casts
        scaled = scalar_arg(w) if is_op(w, MULS) else None
        if scaled is not None:
            w, factor = scaled
            cfg["routed_scaling_factor"] *= factor
        elif is_op(w, (aten.div.Tensor, aten.div_.Tensor)):
            denom = peel(w.args[1], CASTS)
            if is_op(denom, ADDS) and isinstance(denom.args[1], (int, float)) and denom.args[1] < 1e-6:
                denom = denom.args[0]  # DeepSeek's + 1e-20 guards only an all-zero row
            need(is_op(denom, aten.sum.dim_IntList) and denom.args[0] is w.args[0], f"{w}: division is not by the top-k sum")
            w, cfg["normalize"] = w.args[0], True
        else:
            break
        w = peel(w, CASTS)
    sel = topk.args[0]
    score_bias = None
    if is_op(w, operator.getitem):  # weights = the top-k values themselves
        getitem_of(w, 0, (aten.topk,))
        need(w.args[0] is topk, f"{w}: weights from another top-k")
        cfg["scoring"], logits = _scores(sel)
    elif is_op(w, SOFTMAX + (aten.sigmoid,)):  # score only the k winners (GPT-OSS)
        scoring, top_values = _scores(w)
        need(getitem_of(top_values, 0, (aten.topk,)) is topk, f"{w}: scores of another top-k")
        cfg.update(scoring=scoring, order="topk_then_softmax")
        logits = peel(sel, CASTS)
    elif is_op(w, aten.gather):  # weights = scores at the ids chosen on corrected / masked scores
        need(w.args[2] is ids and w.args[1] in (1, -1), f"{w}: gather not at the routed ids")
        cfg["scoring"], logits = _scores(w.args[0])
        choice = sel
        if is_op(choice, aten.masked_fill):
            choice, cfg["n_group"], cfg["topk_group"] = _group_limit(choice)
        if is_op(choice, ADDS):
            other = choice.args[1] if choice.args[0] is w.args[0] else choice.args[0]
            need(is_param(other, 1), f"{choice}: selection bias is not a 1-D parameter")
            score_bias, choice = other, w.args[0]
        need(choice is w.args[0], f"{sel}: selection not on the router scores")
    else:
        raise NoMatch(f"{w}: unknown routing weights")
    v = val(logits)
    need(v is not None and v.dim() == 2, f"{logits}: router logits are not [t, E]")
    return logits, score_bias, cfg
