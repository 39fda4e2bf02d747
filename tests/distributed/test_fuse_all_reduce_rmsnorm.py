"""fuse_all_reduce_rmsnorm on 2 gloo ranks: the all-reduce after a row-split linear and the residual add +
RMSNorm after it become one autodeploy::all_reduce_add_rmsnorm, and the sharded graph still equals eager.

test_shard_transforms.py's Decoder (embedding ─ norm ─ attention ─ o (+x) ─ norm ─ gated MLP (+x) ─ lm_head),
sharded and with its add + norm fused first: of its three all-reduces only o_proj's feeds an add + norm
(the embedding's feeds a plain norm and the residual, down_proj's the lm_head), so one site fuses. The
collectives run for real (gloo), so the output matches eager only if the fused op sums the ranks' rows
before it adds and normalizes. The CUDA push kernel behind it: tests/gpu/test_tp_nccl.py.
"""

from __future__ import annotations

import traceback

import torch

import autodeploy.distributed.collectives  # noqa: F401  (registers the ops the checks count)
from tests.distributed.spawn import run_ranks
from tests.distributed.test_shard_transforms import Decoder, _ids

ops = torch.ops.autodeploy


def check_sharded_decoder(transform: str, run_first: list[str], before: dict, after: dict):
    """On a rank of 2 gloo ranks: the Decoder sharded (run_first), then `transform`, op counts before and after
    it and one match, logits against eager at two shapes; returns the graph. (Run on the ranks by assert_ranks_pass.)"""
    from torch.export import Dim

    from autodeploy.distributed import dist
    from autodeploy.recipe import load_recipe
    from tests.helpers.transform_check import check_transform

    dist.init_distributed(2, "cpu")
    torch.manual_seed(0)  # both ranks build the same weights
    bs = {0: Dim("b", min=1, max=8), 1: Dim("s", min=2, max=32)}
    return check_transform(Decoder(), _ids(2, 6), transform, run_first=run_first, before=before, after=after,
                           matches=1, second_inputs=_ids(3, 9, 1), dynamic_shapes=(bs, bs),
                           recipe=load_recipe("cpu", {"runtime.world_size": 2}))


def _reported(rank: int, out, check) -> str | None:
    """A spawned rank: None when check() passes, else its traceback."""
    try:
        check()
        return None
    except Exception:  # noqa: BLE001 (reported by the parent)
        return traceback.format_exc()


def assert_ranks_pass(check, tmp_path) -> None:
    """check() (a module-level function) on 2 spawned gloo ranks; a failing rank's traceback fails the test."""
    ranks, _ = run_ranks(_reported, 2, tmp_path, check)
    for rank, failure in enumerate(ranks):
        assert failure is None, f"rank {rank}:\n{failure}"


def _check() -> None:
    AR, ADD_NORM, FUSED = ops.all_reduce.default, ops.fused_add_rmsnorm.default, ops.all_reduce_add_rmsnorm.default
    gm = check_sharded_decoder("fuse_all_reduce_rmsnorm", ["shard_tensor_parallel", "fuse_add_rmsnorm"],
                               before={AR: 3, ADD_NORM: 1, FUSED: 0}, after={AR: 2, ADD_NORM: 0, FUSED: 1})
    fused = next(n for n in gm.graph.nodes if n.target is FUSED)
    assert fused.args[0].target is not AR  # it reads the partial sums, not a reduced tensor


def test_sharded_graph_fuses_and_matches_eager(tmp_path):
    assert_ranks_pass(_check, tmp_path)


def test_one_rank_reference_is_the_two_ops_it_replaces():
    g = torch.Generator().manual_seed(0)
    x, residual, w = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g), torch.randn(16, generator=g)
    for offset in (False, True):
        got = ops.all_reduce_add_rmsnorm(x, residual, w, 1e-6, offset)
        want = ops.fused_add_rmsnorm(ops.all_reduce(x), residual, w, 1e-6, offset)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_runs_before_the_norm_fold_into_gemvs():
    # fuse_norm_into_gemv would otherwise take a sharded layer's add + norm sites first (as it does unsharded)
    from autodeploy.transforms.pipeline import ordered_specs

    names = [s.name for s in ordered_specs()]
    assert names.index("fuse_add_rmsnorm") < names.index("fuse_all_reduce_rmsnorm") < names.index("fuse_norm_into_gemv")
