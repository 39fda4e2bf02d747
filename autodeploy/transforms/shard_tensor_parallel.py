"""shard_tensor_parallel: split attention heads, gated MLPs, the embedding and the lm_head over the ranks.

    before (one rank holds everything):
        x ─ q_proj [n*d, h] ─ view [b,s,n,d] ─ rope ─┐
        x ─ k_proj [n_kv*d, h] ─ view ─────── rope ─┼─ attention ─ reshape [b,s,n*d] ─ o_proj [h, n*d] ─ + x
        x ─ v_proj ─ view ──────────────────────────┘
        x ─ gate_proj [f, h] ─┐
        x ─ up_proj   [f, h] ─┴─ gated_mlp_act ─ down_proj [h, f] ─ + x
        ids ─ embedding [V, h]          h ─ lm_head [V, h] ─ logits [.., V]

    after (rank r of W; n_l = n / W, KV heads split or, when n_kv < W, the one this rank reads):
        x ─ q_proj_r [n_l*d, h] ─ view [b,s,n_l,d] ─ rope ─┐
        x ─ k_proj_r ─ view [b,s,n_kv_l,d] ─────── rope ─┼─ attention ─ reshape ─ o_proj_r [h, n_l*d]
        x ─ v_proj_r ─ view ─────────────────────────────┘     ─ all_reduce (+ bias) ─ + x
        x ─ gate_proj_r [f/W, h], up_proj_r ─ gated_mlp_act ─ down_proj_r [h, f/W] ─ all_reduce ─ + x
        ids ─ (ids - r*V/W, outside -> 0) ─ embedding [V/W, h] ─ zero outside ─ all_reduce
        h ─ lm_head_r [V/W, h] ─ all_gather(-1) ─ logits [.., V]
        all_reduce(moe) + all_reduce(shared expert) ─> all_reduce(moe + shared expert)

Detection (autodeploy/distributed/detect.py) and rewriting (rewrite.py) are separate steps; the
plan prints (a table on rank 0) and lands in `gm.meta["shard_plan"]`. The KV cache that
insert_kv_cache sizes later reads the local head counts from the graph's shapes. Weights load
after the transforms, each rank reading only its slices (WeightPlan producers).

World size: `runtime.world_size` (null: the launcher's WORLD_SIZE); at 1 the transform does nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autodeploy.distributed import dist
from autodeploy.distributed.detect import detect_plan
from autodeploy.distributed.plan import EARLIER_KEY, PLAN_KEY, WHOLE_BYTES_KEY, show
from autodeploy.distributed.rewrite import apply_plan, merge_reductions
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register


class ShardTensorParallelConfig(TransformConfig):
    tp_plan: dict[str, Literal["colwise", "rowwise", "replicate"]] = Field(
        default_factory=dict,
        description="Per module path pattern (e.g. 'layers.*.mlp.down_proj'), a split overriding the detected "
                    "one and HF's base_model_tp_plan: colwise, rowwise, or replicate.",
    )
    use_hf_plan: bool = Field(True, description="Let the model config's base_model_tp_plan override the heuristic.")
    vocab_parallel: bool = Field(True, description="Split the embedding and lm_head over the vocabulary.")


@register(Stage.SHARD, ShardTensorParallelConfig, shape_prop=True)
def apply(gm, ctx, cfg: ShardTensorParallelConfig) -> TransformInfo:
    world, rank = dist.transform_world(ctx)
    if world <= 1:
        return TransformInfo(details={"world_size": 1})
    plan = detect_plan(gm, world, rank, hf_config=ctx.hf_config, tp_plan=cfg.tp_plan, use_hf_plan=cfg.use_hf_plan,
                       vocab_parallel=cfg.vocab_parallel)
    mine = list(plan.groups)
    earlier = gm.meta.get(EARLIER_KEY, [])
    plan.groups = list(earlier) + mine
    plan.account(gm, whole_bytes=gm.meta.get(WHOLE_BYTES_KEY, {}))
    show(plan)
    counts = apply_plan(gm, plan, mine)
    counts["all_reduce_merged"] = merge_reductions(gm)  # routed + shared experts: one sum
    gm.meta[PLAN_KEY] = plan
    matched = len(mine)
    warning = None
    if matched == 0:
        warning = f"nothing to split over {world} ranks: every rank holds the whole model"
    return TransformInfo(matches=matched, changed=matched > 0, warning=warning, details=plan.summary() | counts)
