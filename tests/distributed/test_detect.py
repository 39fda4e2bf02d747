"""Plan detection without a process group: slices, view mapping, head splits and GQA replication on a
tiny Llama's canonical graph at several world sizes, tp_plan overrides, the printed plan.

Detection reads the graph only, so one canonical graph (exported once) serves every world size.
"""

from __future__ import annotations

import pytest
import torch

from autodeploy.distributed.detect import detect_plan
from autodeploy.distributed.dims import view_map
from autodeploy.distributed.plan import ShardingError, Slice
from autodeploy.distributed.styles import Styles
from tests.helpers.tiny_models import save_tiny

CANONICAL = ["cleanup_export", "match_attention", "match_gated_mlp", "match_moe", "match_rmsnorm", "match_rope"]


def test_slice_arithmetic():
    s = Slice(0, ((2, 4), (8, 10)), 12)
    assert s.local == 4
    assert s.local_index(8) == 2 and s.local_index(10) == 4 and s.local_index(0) == 0
    assert s.within(0, 6) == Slice(0, ((2, 4),), 6) and s.within(6, 12) == Slice(0, ((2, 4),), 6)
    assert s.union(Slice(0, ((4, 6),), 12)).ranges == ((2, 6), (8, 10))
    assert Slice(2, ((1, 2),), 4).scaled(16, dim=3) == Slice(3, ((16, 32),), 64)
    assert Slice(3, ((16, 32),), 64).divided(16, dim=2) == Slice(2, ((1, 2),), 4)
    assert Slice(3, ((8, 32),), 64).divided(16) is None  # not on a head boundary
    assert Slice.even(1, 8, 4, 3) == Slice(1, ((6, 8),), 8) and not Slice.even(1, 8, 4, 3).is_full()


def test_view_map():
    heads = Slice(2, ((2, 4),), 4)
    assert view_map([2, 5, 4, 16], [2, 5, 64], heads) == Slice(2, ((32, 64),), 64)  # [b,s,n,d] -> [b,s,n*d]
    assert view_map([2, 5, 64], [2, 5, 4, 16], Slice(2, ((32, 64),), 64)) == heads
    assert view_map([2, 5, 4, 16], [2, 1, 5, 64], heads) == Slice(3, ((32, 64),), 64)  # a unit dim in between
    assert view_map([2, 5, 4, 16], [2, 5 * 4, 16], heads) is None  # heads merged below the sequence: scattered


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    from autodeploy.api import export_source, prepare
    from autodeploy.transforms.pipeline import TransformContext, run_pipeline

    src, rec = prepare(str(save_tiny("llama", tmp_path_factory.mktemp("llama"))), "cpu", {"runtime.dtype": "float32"})
    gm = export_source(src, rec)
    run_pipeline(gm, TransformContext(recipe=rec, hf_config=src.config), only=CANONICAL)
    return gm, src.config


def _groups(plan) -> dict[str, tuple]:
    return {g.name: (g.kind, g.split) for g in plan.groups}


def test_world_one_is_empty(canonical):
    gm, _ = canonical
    assert not detect_plan(gm, 1, 0).groups


def test_two_ranks(canonical):
    gm, cfg = canonical
    plan = detect_plan(gm, 2, 1, hf_config=cfg)
    assert _groups(plan)["model.layers.0.self_attn"] == ("attention", "heads 4 -> 2, kv heads 2 -> 1")
    assert _groups(plan)["model.layers.1.mlp"] == ("mlp", "intermediate 128 -> 64")
    shards = plan.param_shards()
    q = shards["model.model.layers.0.self_attn.q_proj.weight"].slice  # rank 1: heads 2, 3 -> rows 32..64
    assert (q.dim, q.ranges, q.size) == (0, ((32, 64),), 64)
    o = shards["model.model.layers.0.self_attn.o_proj.weight"].slice
    assert (o.dim, o.ranges) == (1, ((32, 64),))
    assert shards["model.model.embed_tokens.weight"].slice.ranges == ((128, 256),)
    assert not plan.notes
    assert 2 * plan.rank_bytes == plan.total_bytes + plan.replicated_bytes
    text = plan.text()
    assert "model.layers.1.self_attn  attention" in text and "rank 1 of 2 holds" in text


def test_gqa_kv_heads_replicated_over_four_ranks(canonical):
    gm, _ = canonical
    for rank in range(4):
        plan = detect_plan(gm, 4, rank)
        assert _groups(plan)["model.layers.0.self_attn"][1] == "heads 4 -> 1, kv heads 2 -> 1 (replicated x2)"
        k = plan.param_shards()["model.model.layers.0.self_attn.k_proj.weight"].slice
        assert k.ranges == ((16 * (rank // 2), 16 * (rank // 2 + 1)),)  # query head r reads KV head r // 2


def test_heads_over_too_many_ranks(canonical):
    gm, _ = canonical
    with pytest.raises(ShardingError, match="4 attention heads do not split over 8 ranks"):
        detect_plan(gm, 8, 0)


def test_recipe_tp_plan_replicates(canonical):
    gm, _ = canonical
    plan = detect_plan(gm, 2, 0, tp_plan={"layers.*.mlp.down_proj": "replicate", "lm_head": "replicate"})
    kinds = [g.kind for g in plan.groups]
    assert kinds.count("mlp") == 0 and "lm_head" not in kinds and kinds.count("attention") == 2
    assert any("replicated by recipe tp_plan ('layers.*.mlp.down_proj')" in n for n in plan.notes)
    assert "model.model.layers.0.mlp.down_proj.weight" in plan.replicated


def test_recipe_tp_plan_contradicting_the_graph(canonical):
    gm, _ = canonical
    with pytest.raises(ShardingError, match="o_proj: recipe tp_plan asks 'layers.0.self_attn.o_proj' to be column"):
        detect_plan(gm, 2, 0, tp_plan={"layers.0.self_attn.o_proj": "colwise"})


def test_hf_plan_contradiction_is_a_note(canonical):
    gm, cfg = canonical
    hf = type("Cfg", (), {"base_model_tp_plan": {"layers.*.self_attn.q_proj": "rowwise"}})()
    plan = detect_plan(gm, 2, 0, hf_config=hf)
    assert sum(g.kind == "attention" for g in plan.groups) == 2  # the graph's split is kept
    assert any("hf tp_plan asks" in n and "kept the graph's split" in n for n in plan.notes)


def test_styles_match_module_paths():
    st = Styles({"layers.*.mlp.up_proj": "colwise"}, {"layers.*.mlp.up_proj": "rowwise", "lm_head": "replicate",
                                                      "layers.*.mlp.experts": "moe_tp_experts"})
    assert st.of("model.layers.3.mlp.up_proj") == ("column", "recipe tp_plan", "layers.*.mlp.up_proj")
    assert st.of("lm_head")[0] == "replicate"
    assert st.of("model.layers.3.mlp.experts")[0] == "other"
    assert st.of("model.layers.3.mlp.up_proj_x") is None and st.of("model.xlayers.3.mlp.up_proj") is None


def test_plan_slices_have_local_shapes(canonical):
    """Every rank's slices tile each split parameter exactly once."""
    gm, _ = canonical
    params = dict(gm.named_parameters())
    plans = [detect_plan(gm, 2, r) for r in range(2)]
    for name, shard in plans[0].param_shards().items():
        dim, size = shard.slice.dim, params[name].shape[shard.slice.dim]
        covered = torch.zeros(size, dtype=torch.int64)
        for plan in plans:
            for s, e in plan.param_shards()[name].slice.ranges:
                covered[s:e] += 1
        assert bool((covered == 1).all()), name
