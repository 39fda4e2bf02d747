"""autodeploy::moe_ep — one rank's share of an expert-parallel MoE block.

    x [t, h], router_logits [t, E] (every expert) ──route (global, as autodeploy::moe)──▶ weights, ids [t, k]
    w_gate_up [E_l, 2f, h], w_down [E_l, h, f]: experts expert_start .. expert_start + E_l - 1
        ──▶ sum over the (token, slot) pairs routed to a local expert of weight * expert(x)   [t, h]

Summed over the ranks (autodeploy::all_reduce) this is autodeploy::moe with all E experts: every
rank routes identically (same logits, same fp32 top-k) and each pair is computed on exactly one
rank. The weighted sum is taken in fp32 as autodeploy::moe does; pairs routed elsewhere add 0.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.moe import route, run_sorted, weighted_sum


def local_experts(x: Tensor, weights: Tensor, ids: Tensor, expert_start: int, w_gate_up: Tensor, w_down: Tensor,
                  b_gate_up: Optional[Tensor], b_down: Optional[Tensor], act: str, interleaved: bool,
                  alpha: float, limit: float) -> Tensor:
    """x [t, h], weights / ids [t, k] (global expert ids) -> [t, h] from the local experts only."""
    t, k = ids.shape
    n_local, h = w_gate_up.shape[0], w_down.shape[1]
    local_ids = ids.reshape(-1) - expert_start  # [t*k]
    mine = (local_ids >= 0) & (local_ids < n_local)
    pairs = mine.nonzero().squeeze(1)  # [m] flat (token, slot) indices of local pairs
    lid = local_ids[pairs]
    order = torch.argsort(lid, stable=True)
    pairs, lid = pairs[order], lid[order]
    counts = torch.bincount(lid, minlength=n_local).tolist()  # one host sync, as autodeploy::moe
    out = x.new_zeros(t * k, h)  # [t*k, h]: pairs of other ranks stay 0
    out[pairs] = run_sorted(x[pairs // k], counts, w_gate_up, w_down, b_gate_up, b_down, act, interleaved, alpha, limit)
    return weighted_sum(out, weights, x.dtype)


@torch.library.custom_op("autodeploy::moe_ep", mutates_args=())
def moe_ep(
    x: Tensor,
    router_logits: Tensor,
    w_gate_up: Tensor,
    w_down: Tensor,
    b_gate_up: Optional[Tensor] = None,
    b_down: Optional[Tensor] = None,
    e_score_correction_bias: Optional[Tensor] = None,
    expert_start: int = 0,
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
    """x [t, h], router_logits [t, E], w_gate_up [E_l, 2f, h], w_down [E_l, h, f] -> partial [t, h]."""
    weights, ids = route(router_logits, top_k, scoring, order, normalize, n_group, topk_group,
                         routed_scaling_factor, e_score_correction_bias)
    return local_experts(x, weights, ids, expert_start, w_gate_up, w_down, b_gate_up, b_down, act,
                         interleaved_gate_up, swiglu_alpha, swiglu_limit)


@moe_ep.register_fake
def _(x, router_logits, w_gate_up, w_down, *args, **kwargs) -> Tensor:
    return torch.empty_like(x)
