"""Tensor parallelism on 2 GPUs over NCCL (skipped without 2 CUDA devices).

    collectives       autodeploy::all_reduce / all_gather eager and replayed from a CUDA graph
    one-shot          small bf16 / fp32 all-reduces through torch's one-shot kernel over symmetric
                      memory (runtime.all_reduce "oneshot"): active on NVLink H100s, equal to NCCL's
                      sum, replayable in a graph
    push              decode rows through the push kernel (runtime.all_reduce "auto"), plain and fused
                      with the residual add + RMSNorm: equal to NCCL's sum (+ the reference add + norm),
                      bit-identical on both ranks, eager and replayed from a CUDA graph many times
    tiny llama        h100 recipe (torch.compile + CUDA graphs, overlap scheduling) in fp32, so a
                      different summation order cannot flip a greedy token: the 2-rank runtime's
                      greedy tokens equal the 1-rank runtime's, step logits within fp32 tolerance
    tiny mixtral      the same with expert parallelism, eager (the MoE reference syncs with the host)

NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 in every rank's environment.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed.spawn import run_ranks
from tests.helpers.tiny_models import save_tiny
from tests.helpers.tolerances import assert_close

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]

PROMPTS = [[5, 17, 33, 2, 81, 9, 120], [44, 3, 250, 61], [7, 7, 90, 12, 200]]
SETTINGS = dict(dtype="float32", max_batch_size=4, max_seq_len=64, max_num_tokens=128, kv_num_pages=32,
                cuda_graph_batch_sizes=[1, 2, 4])


@pytest.fixture(autouse=True)
def _no_nvls(monkeypatch):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")  # the spawned ranks inherit it


def _collectives(rank: int, out) -> dict:
    from autodeploy.distributed import dist

    dist.init_distributed(2, "cuda")
    ops = torch.ops.autodeploy
    import autodeploy.distributed.collectives  # noqa: F401

    dev = torch.device(f"cuda:{rank}")
    x = torch.full((3, 8), float(rank + 1), device=dev)
    eager_sum = ops.all_reduce(x)
    eager_cat = ops.all_gather(x, -1, 2)
    static = torch.zeros(3, 8, device=dev)
    ops.all_reduce(static)  # the communicator exists before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ops.all_reduce(static * 2)
    replays = []
    for v in (1.0, 5.0):
        static.fill_(v + rank)
        graph.replay()
        replays.append(y.clone().cpu())
    torch.cuda.synchronize(dev)
    return {"sum": eager_sum.cpu(), "cat": eager_cat.cpu(), "replays": replays}


def _one_shot(rank: int, out) -> dict:
    import torch.distributed as tdist

    from autodeploy.distributed import dist, symm_all_reduce

    dist.init_distributed(2, "cuda", "oneshot")
    import autodeploy.distributed.collectives  # noqa: F401

    dev = torch.device(f"cuda:{rank}")
    gen = torch.Generator(device="cpu").manual_seed(rank)
    results = {"active": symm_all_reduce.active() and not symm_all_reduce.push_active()}
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(1, 4096, generator=gen).to(dev, dtype)  # a decode step's [1, hidden]
        got = torch.ops.autodeploy.all_reduce(x)
        want = x.clone()
        tdist.all_reduce(want)  # NCCL
        results[str(dtype)] = (got.float().cpu(), want.float().cpu())
    static = torch.zeros(2, 4096, device=dev, dtype=torch.bfloat16)
    torch.ops.autodeploy.all_reduce(static)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ys = [torch.ops.autodeploy.all_reduce(static + i) for i in range(3)]  # back to back, one buffer
    static.fill_(float(rank + 1))
    graph.replay()
    torch.cuda.synchronize(dev)
    results["graph"] = [float(y[1, 7]) for y in ys]
    return results


def test_one_shot_all_reduce_matches_nccl(tmp_path):
    ranks, _ = run_ranks(_one_shot, 2, tmp_path)
    for r in ranks:
        assert r["active"], "symmetric-memory all-reduce did not set up on this 2-GPU host"
        for dtype in (torch.bfloat16, torch.float32):
            got, want = r[str(dtype)]
            assert_close(got, want, dtype)
        # (1 + i) + (2 + i) for the three captured calls
        assert r["graph"] == [3.0, 5.0, 7.0]


def _push(rank: int, out) -> dict:
    import torch.distributed as tdist

    from autodeploy.distributed import dist, symm_all_reduce

    dist.init_distributed(2, "cuda")
    import autodeploy.distributed.collectives  # noqa: F401

    ops = torch.ops.autodeploy
    dev = torch.device(f"cuda:{rank}")
    gen = torch.Generator(device="cpu").manual_seed(rank)
    shared = torch.Generator(device="cpu").manual_seed(7)  # residual and weight: the same on both ranks
    results = {"active": symm_all_reduce.push_active(), "eager": []}
    for dtype in (torch.bfloat16, torch.float32):
        for rows in (1, 5, 32):
            x = torch.randn(rows, 4096, generator=gen).to(dev, dtype)
            res = torch.randn(rows, 4096, generator=shared).to(dev, dtype)
            w = (1 + 0.1 * torch.randn(4096, generator=shared)).to(dev, dtype)
            want = x.clone()
            tdist.all_reduce(want)  # NCCL
            ref_norm, ref_res = ops.fused_add_rmsnorm(want, res, w, 1e-5, False)
            got = ops.all_reduce(x)
            got_norm, got_res = ops.all_reduce_add_rmsnorm(x, res, w, 1e-5, False)
            results["eager"].append((dtype, [t.float().cpu() for t in (got, want, got_norm, ref_norm, got_res, ref_res)]))
    results["linear"] = []  # a row-parallel projection: the GEMV pushes its tiles, the push kernel reduces
    for dtype in (torch.bfloat16, torch.float32):
        for rows in (1, 5):
            x = torch.randn(rows, 2048, generator=gen).to(dev, dtype)
            wo = (torch.randn(4096, 2048, generator=gen) * 2048**-0.5).to(dev, dtype)
            res = torch.randn(rows, 4096, generator=shared).to(dev, dtype)
            w = (1 + 0.1 * torch.randn(4096, generator=shared)).to(dev, dtype)
            part = torch.nn.functional.linear(x, wo)
            tdist.all_reduce(part)  # NCCL
            ref = ops.fused_add_rmsnorm(part, res, w, 1e-5, False)
            got = ops.linear_all_reduce_add_rmsnorm(x, wo, res, w, 1e-5, False)
            results["linear"].append((dtype, [t.float().cpu() for t in (*got, *ref)]))
    results["gather"] = []  # the vocab-parallel logits of a decode step (8B at TP=2: [1, 64128]) and a small one
    for shape in ((1, 64128), (3, 1000)):
        shard = torch.randn(*shape, generator=gen).to(dev, torch.bfloat16)
        parts = [torch.empty_like(shard) for _ in range(2)]
        tdist.all_gather(parts, shard)  # NCCL
        results["gather"].append(torch.equal(ops.all_gather(shard, -1, 2), torch.cat(parts, dim=-1)))
    # a decode step's pattern, captured once and replayed: fused, plain, fused back to back on one buffer
    static = torch.zeros(1, 4096, device=dev, dtype=torch.bfloat16)
    res = torch.ones(1, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.ones(4096, device=dev, dtype=torch.bfloat16)
    eye = torch.eye(4096, device=dev, dtype=torch.bfloat16)  # a projection that keeps its input
    ops.all_reduce_add_rmsnorm(static, res, w, 1e-5, False)  # eager first: the graph replays what ran
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        n1, r1 = ops.all_reduce_add_rmsnorm(static, res, w, 1e-5, False)
        s2 = ops.all_reduce(r1 * 2)
        n3, r3 = ops.all_reduce_add_rmsnorm(s2, r1, w, 1e-5, False)
        g4 = ops.all_gather(n3, -1, 2)  # the same slots, the gather kernel
        n5, r5 = ops.linear_all_reduce_add_rmsnorm(n3, eye, r3, w, 1e-5, False)  # the GEMV pushing, then reducing
    replays = []
    for step in range(200):
        static.fill_(float(rank + 1 + step % 3))
        graph.replay()
        if step % 67 == 0:
            replays.append([float(t[0, 9]) for t in (r1, s2, r3, n3)] + [float(g4[0, 4096 + 9]), g4.shape[-1]]
                           + [float(r5[0, 9])])
    torch.cuda.synchronize(dev)
    results["replays"] = replays
    results["counters"] = symm_all_reduce._PUSH.counters.cpu()
    from autodeploy.distributed.launch import share_tokens  # rank 0's sampled ids, through the push kernel

    ids = torch.tensor([5, 128255, 0, 77], device=dev) if rank == 0 else torch.empty(4, dtype=torch.int64, device=dev)
    results["tokens"] = share_tokens(ids).cpu().tolist()
    # the peer pushed only for calls this rank made too, and each call read its pushes and emptied them
    results["empty"] = bool((symm_all_reduce._PUSH.flat == 255).all())
    return results


def test_push_all_reduce_matches_nccl_on_both_ranks(tmp_path):
    ranks, _ = run_ranks(_push, 2, tmp_path)
    for r in ranks:
        assert r["active"], "the push all-reduce did not set up on this 2-GPU host"
        for dtype, (got, want, got_norm, ref_norm, got_res, ref_res) in r["eager"]:
            assert_close(got, want, dtype)
            assert_close(got_res, ref_res, dtype)
            assert_close(got_norm, ref_norm, dtype)
    for (_, a), (_, b) in zip(ranks[0]["eager"], ranks[1]["eager"]):
        assert all(torch.equal(u, v) for u, v in zip(a[::2], b[::2]))  # replicated activations: the same bits
    for r in ranks:
        for dtype, (normed, new_res, ref_normed, ref_res) in r["linear"]:
            assert_close(new_res, ref_res, dtype)
            assert_close(normed, ref_normed, dtype)
    for (_, a), (_, b) in zip(ranks[0]["linear"], ranks[1]["linear"]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for step, values in zip(range(0, 200, 67), ranks[0]["replays"]):
        v = 1 + step % 3
        r1 = 1.0 + (v + v + 1)  # residual 1 + both ranks' rows
        # r3 = all_reduce(s2) + r1: s2 (4 r1 on each rank) is summed over the ranks again
        assert values[:3] == [r1, 4 * r1, 2 * 4 * r1 + r1] and values[3] == pytest.approx(1.0, rel=1e-2)
        assert values[4] == values[3] and values[5] == 2 * 4096  # rank 1's normed row, beside rank 0's
        assert values[6] == pytest.approx(2 * values[3] + values[2], rel=1e-2)  # both ranks' n3 (eye) + r3
    assert ranks[0]["replays"] == ranks[1]["replays"]
    assert torch.equal(ranks[0]["counters"], ranks[1]["counters"])
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == [5, 128255, 0, 77]
    assert all(r["gather"] == [True, True] for r in ranks)
    assert all(r["empty"] for r in ranks), "a pushed value was never read (or never emptied)"


def test_collectives_eager_and_in_a_cuda_graph(tmp_path):
    ranks, _ = run_ranks(_collectives, 2, tmp_path)
    for r in ranks:
        assert torch.equal(r["sum"], torch.full((3, 8), 3.0))
        assert torch.equal(r["cat"], torch.cat([torch.full((3, 8), 1.0), torch.full((3, 8), 2.0)], dim=-1))
        # 2 * (v + 0) + 2 * (v + 1)
        assert [float(t[0, 0]) for t in r["replays"]] == [6.0, 22.0]


def _steps(model) -> list[torch.Tensor]:
    from autodeploy.runtime.sequence_info import SequenceInfo

    a, b, c = PROMPTS
    page = model.page_size
    steps = [[(a, 0, [0]), (b, 0, [1])],
             [([11], len(a), [0]), ([12], len(b), [1]), (c, 0, [2])],
             [([13], len(a) + 1, [0]), ([14], len(b) + 1, [1]), ([15], len(c), [2])],
             [([16], len(a) + 2, [0]), ([17], len(b) + 2, [1]), ([18], len(c) + 1, [2])]]
    return [model.forward(SequenceInfo.build(chunks, page)).float().cpu() for chunks in steps]


def _greedy(rt) -> list[list[int]]:
    from autodeploy.runtime.sampling import SamplingParams

    return [o.token_ids for o in rt.generate(PROMPTS, SamplingParams(max_tokens=10, temperature=0.0))]


def _tp_worker(rank: int, out, path: str, backend: str) -> dict:
    import autodeploy
    from autodeploy.distributed.launch import follow_if_worker, stop_followers

    rt = autodeploy.optimize(path, "h100", world_size=2, compile_backend=backend, **SETTINGS)
    logits = _steps(rt.model)
    tokens = None
    if not follow_if_worker(rt):
        tokens = _greedy(rt)
        stop_followers()
    return {"logits": logits, "tokens": tokens, "replays": getattr(rt.model, "replays", None),
            "device": str(rt.device)}


def _one_rank(path: str, backend: str) -> dict:
    import autodeploy

    rt = autodeploy.optimize(path, "h100", compile_backend=backend, **SETTINGS)
    return {"logits": _steps(rt.model), "tokens": _greedy(rt)}


@pytest.mark.parametrize("arch, backend", [("llama", "cuda-graph"), ("mixtral", "eager")])
def test_two_gpus_match_one(tmp_path, arch, backend):
    path = str(save_tiny(arch, tmp_path / arch))
    ref = _one_rank(path, backend)
    torch.cuda.empty_cache()
    ranks, _ = run_ranks(_tp_worker, 2, tmp_path / "out", path, backend)
    assert [r["device"] for r in ranks] == ["cuda:0", "cuda:1"]
    assert ranks[0]["tokens"] == ref["tokens"]
    if backend == "cuda-graph":  # decode steps replayed from CUDA graphs on both ranks alike
        assert ranks[0]["replays"] and ranks[0]["replays"] == ranks[1]["replays"]
    for r in ranks:
        for got, want in zip(r["logits"], ref["logits"]):
            assert_close(got, want)
