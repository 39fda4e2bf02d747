"""fuse_linear_all_reduce on 2 gloo ranks: the row-split o_proj feeding autodeploy::all_reduce_add_rmsnorm becomes
one autodeploy::linear_all_reduce_add_rmsnorm, and the sharded graph still equals eager.

test_shard_transforms.py's Decoder has one all_reduce_add_rmsnorm site once fuse_all_reduce_rmsnorm ran (after
o_proj; down_proj's all-reduce feeds the lm_head): its x is the bias-free o_proj shard, so one site fuses. The
collectives run for real (gloo), so the output matches eager only if the fused op projects with the shard before
it reduces, adds and normalizes. The CUDA kernels behind it (the GEMV pushing its tiles, the push kernel's
reducing half): tests/backends/triton/test_push_all_reduce.py (interpreted) and tests/gpu/test_tp_nccl.py.
"""

from __future__ import annotations

import traceback

import torch

from tests.distributed.spawn import run_ranks
from tests.distributed.test_shard_transforms import Decoder, _ids

ops = torch.ops.autodeploy


def _worker(rank: int, out) -> str | None:
    from torch.export import Dim

    import autodeploy.distributed.collectives  # noqa: F401  (registers the ops counted below)
    from autodeploy.distributed import dist
    from autodeploy.recipe import load_recipe
    from tests.helpers.transform_check import check_transform

    dist.init_distributed(2, "cpu")
    try:
        torch.manual_seed(0)  # both ranks build the same weights
        bs = {0: Dim("b", min=1, max=8), 1: Dim("s", min=2, max=32)}
        REDUCE_NORM, FUSED = ops.all_reduce_add_rmsnorm.default, ops.linear_all_reduce_add_rmsnorm.default
        gm = check_transform(Decoder(), _ids(2, 6), "fuse_linear_all_reduce",
                             run_first=["shard_tensor_parallel", "fuse_add_rmsnorm", "fuse_all_reduce_rmsnorm"],
                             before={REDUCE_NORM: 1, FUSED: 0}, after={REDUCE_NORM: 0, FUSED: 1}, matches=1,
                             second_inputs=_ids(3, 9, 1), dynamic_shapes=(bs, bs),
                             recipe=load_recipe("cpu", {"runtime.world_size": 2}))
        fused = next(n for n in gm.graph.nodes if n.target is FUSED)
        assert fused.args[1].op == "get_attr"  # it projects with the shard itself
        return None
    except Exception:  # noqa: BLE001 (reported by the parent)
        return traceback.format_exc()


def test_sharded_graph_fuses_and_matches_eager(tmp_path):
    ranks, _ = run_ranks(_worker, 2, tmp_path)
    for rank, failure in enumerate(ranks):
        assert failure is None, f"rank {rank}:\n{failure}"


def test_one_rank_reference_is_the_ops_it_replaces():
    import autodeploy.distributed.collectives  # noqa: F401

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 32, generator=g), torch.randn(16, 32, generator=g)
    residual, nw = torch.randn(3, 16, generator=g), torch.randn(16, generator=g)
    for offset in (False, True):
        got = ops.linear_all_reduce_add_rmsnorm(x, w, residual, nw, 1e-6, offset)
        want = ops.all_reduce_add_rmsnorm(torch.nn.functional.linear(x, w), residual, nw, 1e-6, offset)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_registers_after_the_op_it_matches_and_before_backend_selection():
    from autodeploy.transforms.pipeline import ordered_specs

    names = [s.name for s in ordered_specs()]
    assert names.index("fuse_all_reduce_rmsnorm") < names.index("fuse_linear_all_reduce") < names.index("select_backends")
