"""shard_experts: every autodeploy::moe split over the ranks, its partial outputs joined by an all_reduce.

    before:  out = autodeploy.moe(x, router_logits, w_gate_up [E, 2f, h], w_down [E, h, f], …)      [t, h]

    after (ep, rank r of W; E_l = E / W):
             part = autodeploy.moe_ep(x, router_logits, w_gate_up [E_l, 2f, h], w_down [E_l, h, f], …,
                                      expert_start=r*E_l)      # global routing, local experts only
             out = autodeploy.all_reduce(part)
    after (tp):
             part = autodeploy.moe(x, router_logits, w_gate_up [E, 2f/W, h], w_down [E, h, f/W], …)
             out = autodeploy.all_reduce(part)

The router linear and any shared expert stay outside (shard_tensor_parallel splits a shared
expert as a gated MLP). Runs before shard_tensor_parallel (same stage, registry order), which
prints the combined plan; the expert groups are kept in gm.meta["shard_groups"].
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from autodeploy.distributed import dist
from autodeploy.distributed.experts import apply_expert_group, check_exclusive, expert_group
from autodeploy.distributed.plan import EARLIER_KEY, WHOLE_BYTES_KEY
from autodeploy.graph import nodes_of
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

MOE = torch.ops.autodeploy.moe.default


class ShardExpertsConfig(TransformConfig):
    mode: Literal["auto", "ep", "tp"] = Field(
        "auto", description="ep: whole experts split over the ranks; tp: every expert's hidden units split; "
                            "auto: ep when the experts divide over the ranks, else tp.",
    )


@register(Stage.SHARD, ShardExpertsConfig, shape_prop=True)
def apply(gm, ctx, cfg: ShardExpertsConfig) -> TransformInfo:
    world, rank = dist.transform_world(ctx)
    moes = nodes_of(gm, MOE)
    if world <= 1 or not moes:
        return TransformInfo(details={"world_size": world})
    groups = [expert_group(m, world, rank, cfg.mode) for m in moes]  # every check before any rewrite
    for g in groups:
        check_exclusive(gm, g)
    whole = gm.meta.setdefault(WHOLE_BYTES_KEY, {})
    for g in groups:
        for name in g.params:
            p = gm.get_parameter(name)
            whole[name] = p.numel() * p.element_size()
        apply_expert_group(gm, g)
    gm.meta.setdefault(EARLIER_KEY, []).extend(groups)
    modes = sorted({g.extra["mode"] for g in groups})
    return TransformInfo(matches=len(groups), changed=True,
                         details={"world_size": world, "mode": modes, "blocks": [f"{g.name}: {g.split}" for g in groups]})
