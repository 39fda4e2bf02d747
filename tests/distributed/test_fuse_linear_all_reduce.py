"""fuse_linear_all_reduce on 2 gloo ranks: the row-split o_proj feeding autodeploy::all_reduce_add_rmsnorm becomes
one autodeploy::linear_all_reduce_add_rmsnorm, and the sharded graph still equals eager.

test_shard_transforms.py's Decoder has one all_reduce_add_rmsnorm site once fuse_all_reduce_rmsnorm ran (after
o_proj; down_proj's all-reduce feeds the lm_head): its x is the bias-free o_proj shard, so one site fuses. The
collectives run for real (gloo), so the output matches eager only if the fused op projects with the shard before
it reduces, adds and normalizes. The CUDA kernels behind it (the GEMV pushing its tiles, the push kernel's
reducing half): tests/backends/triton/test_push_all_reduce.py (interpreted) and tests/gpu/test_tp_nccl.py.
"""

from __future__ import annotations

import torch

from tests.distributed.test_fuse_all_reduce_rmsnorm import assert_ranks_pass, check_sharded_decoder

ops = torch.ops.autodeploy


def _check() -> None:
    REDUCE_NORM, FUSED = ops.all_reduce_add_rmsnorm.default, ops.linear_all_reduce_add_rmsnorm.default
    gm = check_sharded_decoder("fuse_linear_all_reduce",
                               ["shard_tensor_parallel", "fuse_add_rmsnorm", "fuse_all_reduce_rmsnorm"],
                               before={REDUCE_NORM: 1, FUSED: 0}, after={REDUCE_NORM: 0, FUSED: 1})
    fused = next(n for n in gm.graph.nodes if n.target is FUSED)
    assert fused.args[1].op == "get_attr"  # it projects with the shard itself


def test_sharded_graph_fuses_and_matches_eager(tmp_path):
    assert_ranks_pass(_check, tmp_path)


def test_one_rank_reference_is_the_ops_it_replaces():
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
