"""autodeploy::moe — the canonical mixture-of-experts op and its CPU reference implementation.

    x [t, h], router_logits [t, E] ──route──▶ weights [t, k] (fp32), ids [t, k]
                                   ──experts──▶ sum_k weights[:, k] * expert_{ids[:, k]}(x)  ->  [t, h]

Expert e is a gated MLP:  down_e( act(gate_e(x), up_e(x)) ) with
    w_gate_up [E, 2f, h] (+ b_gate_up [E, 2f]),  w_down [E, h, f] (+ b_down [E, h]).
The 2f rows of w_gate_up are [gate; up] (Mixtral, Qwen, DeepSeek) or, with
`interleaved_gate_up`, alternating gate0, up0, gate1, up1, ... (GPT-OSS). Only the logical shape
is part of the contract: a transposed view ([E, h, 2f] stored, as GPT-OSS keeps it) is fine.

Routing, all in fp32 whatever the activation dtype (as every HF router upcasts):
- scoring "softmax" | "sigmoid" turns logits into scores;
- order "softmax_then_topk": score all E logits, take the top k scores (Mixtral, Qwen, DeepSeek);
  "topk_then_softmax": take the top k logits, then score only those (GPT-OSS). For sigmoid the
  two orders agree (sigmoid is monotonic and elementwise);
- e_score_correction_bias [E] (DeepSeek-V3): added to the scores for *selection only*; the weights
  are the uncorrected scores of the selected experts;
- n_group > 1 (DeepSeek-V3 group-limited routing): experts split into n_group groups; a group's
  score is the sum of its top-2 selection scores; only the best topk_group groups compete;
- normalize: divide the k weights by their sum (Mixtral, DeepSeek, Qwen3 with norm_topk_prob);
- routed_scaling_factor multiplies the final weights (DeepSeek-V3: 2.5).

Activations ("act"): "silu" / "gelu" / "gelu_tanh": act(gate) * up;  "swiglu_clamped" (GPT-OSS):
gate = min(gate, limit), up = clamp(up, -limit, limit), out = (up + 1) * gate * sigmoid(alpha * gate).

The weighted sum over the k experts of a token is taken in fp32, then cast to x.dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SCORINGS = ("softmax", "sigmoid")
ORDERS = ("softmax_then_topk", "topk_then_softmax")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "swiglu_clamped")
GROUP_SCORE_TOPK = 2  # DeepSeek-V3: a group's score is the sum of its two best experts


def _score(logits: Tensor, scoring: str) -> Tensor:
    return torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)


def _group_mask(choice: Tensor, n_group: int, topk_group: int) -> Tensor:
    """Boolean [t, E]: True where the expert's group is among the topk_group best groups."""
    t, e = choice.shape
    grouped = choice.view(t, n_group, e // n_group)  # [t, G, E/G]
    group_scores = grouped.topk(min(GROUP_SCORE_TOPK, e // n_group), dim=-1).values.sum(-1)  # [t, G]
    best = group_scores.topk(topk_group, dim=-1).indices  # [t, topk_group]
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)  # [t, G]
    return keep.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)


def route(
    router_logits: Tensor,
    top_k: int,
    scoring: str = "softmax",
    order: str = "softmax_then_topk",
    normalize: bool = False,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling_factor: float = 1.0,
    e_score_correction_bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """router_logits [t, E] -> (weights [t, k] fp32, expert ids [t, k] int64)."""
    if scoring not in SCORINGS:
        raise ValueError(f"moe: scoring must be one of {SCORINGS}, got {scoring!r}")
    if order not in ORDERS:
        raise ValueError(f"moe: order must be one of {ORDERS}, got {order!r}")
    logits = router_logits.float()
    if order == "topk_then_softmax":
        if e_score_correction_bias is not None or n_group > 1:
            raise ValueError("moe: score bias and group-limited routing need order='softmax_then_topk'")
        top_logits, ids = logits.topk(top_k, dim=-1)  # [t, k]
        weights = _score(top_logits, scoring)
    else:
        scores = _score(logits, scoring)  # [t, E]
        choice = scores if e_score_correction_bias is None else scores + e_score_correction_bias.float()
        if n_group > 1:
            choice = choice.masked_fill(~_group_mask(choice, n_group, topk_group), float("-inf"))
        ids = choice.topk(top_k, dim=-1).indices  # [t, k]
        weights = scores.gather(1, ids)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    return weights, ids


def gated_act(gate_up: Tensor, act: str, interleaved: bool, alpha: float, limit: float) -> Tensor:
    """gate_up [n, 2f] -> [n, f]."""
    if interleaved:
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    else:
        gate, up = gate_up.chunk(2, dim=-1)
    if act == "silu":
        return F.silu(gate) * up
    if act == "gelu":
        return F.gelu(gate) * up
    if act == "gelu_tanh":
        return F.gelu(gate, approximate="tanh") * up
    if act == "swiglu_clamped":
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))
    raise ValueError(f"moe: act must be one of {ACTIVATIONS}, got {act!r}")


def run_sorted(rows: Tensor, counts: list[int], w_gate_up: Tensor, w_down: Tensor, b_gate_up: Optional[Tensor],
               b_down: Optional[Tensor], act: str, interleaved: bool, alpha: float, limit: float) -> Tensor:
    """rows [m, h] grouped by expert (counts[e] rows for expert e, in order) -> each row through its expert [m, h].

    Shared with distributed/moe_ep.py, whose counts cover only the rank's experts."""
    out = rows.new_empty(rows.shape[0], w_down.shape[1])  # [m, h]
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        seg = rows[start : start + n]
        gate_up = F.linear(seg, w_gate_up[e], None if b_gate_up is None else b_gate_up[e])  # [n, 2f]
        hidden = gated_act(gate_up, act, interleaved, alpha, limit)  # [n, f]
        out[start : start + n] = F.linear(hidden, w_down[e], None if b_down is None else b_down[e])
        start += n
    return out


def weighted_sum(out: Tensor, weights: Tensor, dtype: torch.dtype) -> Tensor:
    """out [t*k, h] in (token, slot) order, weights [t, k] -> [t, h]: the k partial outputs of a token
    summed in fp32 in slot order, as transformers does."""
    t, k = weights.shape
    weighted = out.float().view(t, k, out.shape[-1]) * weights.float().unsqueeze(-1)  # [t, k, h]
    return weighted.sum(dim=1).to(dtype)


def experts(
    x: Tensor,
    weights: Tensor,
    ids: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
    b_gate_up: Optional[Tensor],
    b_down: Optional[Tensor],
    act: str,
    interleaved: bool,
    alpha: float,
    limit: float,
) -> Tensor:
    """x [t, h], weights/ids [t, k] -> [t, h]: each (token, slot) pair through its expert, then the weighted sum."""
    k = ids.shape[1]
    flat_ids = ids.reshape(-1)  # [t*k], slot-major per token as HF lays it out
    order = torch.argsort(flat_ids, stable=True)  # pairs grouped by expert
    counts = torch.bincount(flat_ids, minlength=w_gate_up.shape[0]).tolist()  # one host sync
    out_sorted = run_sorted(x[order // k], counts, w_gate_up, w_down, b_gate_up, b_down, act, interleaved, alpha, limit)
    out = torch.empty_like(out_sorted)
    out[order] = out_sorted  # back to (token, slot) order
    return weighted_sum(out, weights, x.dtype)


@torch.library.custom_op("autodeploy::moe", mutates_args=())
def moe(
    x: Tensor,
    router_logits: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
    b_gate_up: Optional[Tensor] = None,
    b_down: Optional[Tensor] = None,
    e_score_correction_bias: Optional[Tensor] = None,
    top_k: int = 2,
    scoring: str = "softmax",
    order: str = "softmax_then_topk",
    normalize: bool = False,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling_factor: float = 1.0,
    act: str = "silu",
    interleaved_gate_up: bool = False,
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
) -> Tensor:
    """x [t, h], router_logits [t, E], w_gate_up [E, 2f, h], w_down [E, h, f] -> [t, h]."""
    weights, ids = route(
        router_logits, top_k, scoring, order, normalize, n_group, topk_group, routed_scaling_factor, e_score_correction_bias
    )
    return experts(x, weights, ids, w_gate_up, w_down, b_gate_up, b_down, act, interleaved_gate_up, swiglu_alpha, swiglu_limit)


@moe.register_fake
def _moe_fake(x, router_logits, w_gate_up, w_down, *args, **kwargs) -> Tensor:
    return torch.empty_like(x)
