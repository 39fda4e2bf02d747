"""Tensor / expert parallelism on 2 gloo ranks against 1 rank, for tiny Llama, Qwen3, Mixtral,
Qwen3-MoE and DeepSeek-V3 saved with save_pretrained (the real loading path: a lazy safetensors
state for the dense checkpoints, transformers' per-expert conversion for the MoE ones).

One spawn runs every architecture on both ranks while the parent builds the 1-rank references:

    each rank:  optimize(dir, world_size=2) ─ the paged model driven through three steps (two
                prefills, a mixed prefill + decode step, decodes): last-token logits ─ greedy
                generate through the runtime (rank 0 schedules, rank 1 follows) ─ parameter bytes
    parent:     optimize(dir) ─ the same steps and generate

and the impossible splits fail with ShardingError before any weight is read (their folders hold
a corrupt safetensors file, which loading would trip over).
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed.spawn import run_ranks
from tests.helpers.tiny_models import save_tiny, tiny_config
from tests.helpers.tolerances import assert_close_relative

ARCHS = ["llama", "qwen3", "mixtral", "qwen3_moe", "deepseek_v3"]
SETTINGS = dict(dtype="float32", max_batch_size=4, max_seq_len=64, max_num_tokens=64, kv_num_pages=24)
PROMPTS = [[5, 17, 33, 2, 81, 9, 120], [44, 3, 250, 61], [7, 7, 90, 12, 200]]
# heads that cannot split over 2 ranks: 3 query heads; 6 query heads over 3 KV heads (3 neither
# divides by 2 nor divides 2, so KV heads cannot be replicated evenly either)
BAD = {"bad_heads": dict(num_attention_heads=3, num_key_value_heads=3),
       "bad_kv_heads": dict(num_attention_heads=6, num_key_value_heads=3)}


def model_steps(model) -> list[torch.Tensor]:
    """Three steps straight through the paged model: prefill A and B; decode A, B + prefill C; decode all."""
    from autodeploy.runtime.sequence_info import SequenceInfo

    a, b, c = PROMPTS
    page = model.page_size
    steps = [
        [(a, 0, [0]), (b, 0, [1])],
        [([11], len(a), [0]), ([12], len(b), [1]), (c, 0, [2])],
        [([13], len(a) + 1, [0]), ([14], len(b) + 1, [1]), ([15], len(c), [2])],
    ]
    return [model.forward(SequenceInfo.build(chunks, page)).clone() for chunks in steps]


def greedy(rt) -> list[list[int]]:
    from autodeploy.runtime.sampling import SamplingParams

    return [o.token_ids for o in rt.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.0))]


def param_bytes(gm) -> int:
    return sum(p.numel() * p.element_size() for p in gm.parameters())


def _worker(rank: int, out, dirs: dict[str, str]) -> dict:
    import autodeploy
    from autodeploy.distributed.launch import follow_if_worker, stop_followers
    from autodeploy.distributed.plan import ShardingError

    results: dict = {}
    for name in BAD:
        try:
            autodeploy.optimize(dirs[name], "cpu", world_size=2, **SETTINGS)
            results[name] = None
        except ShardingError as e:
            results[name] = str(e)
    for arch in ARCHS:
        rt = autodeploy.optimize(dirs[arch], "cpu", world_size=2, **SETTINGS)
        logits = model_steps(rt.model)
        tokens = None
        if not follow_if_worker(rt):
            tokens = greedy(rt)
            stop_followers()
        gm = rt.graph_module
        plan = gm.meta["shard_plan"]
        results[arch] = dict(logits=logits, tokens=tokens, bytes=param_bytes(gm), total=plan.total_bytes,
                             rank_bytes=plan.rank_bytes, replicated=plan.replicated_bytes, plan=plan.text(),
                             kinds=plan.summary()["groups"], n_kv=[s.n_kv for s in gm.meta["kv_cache_spec"]])
    return results


def _references(dirs: dict[str, str]) -> dict:
    import autodeploy

    out = {}
    for arch in ARCHS:
        rt = autodeploy.optimize(dirs[arch], "cpu", **SETTINGS)
        out[arch] = dict(logits=model_steps(rt.model), tokens=greedy(rt), bytes=param_bytes(rt.graph_module),
                         n_kv=[s.n_kv for s in rt.graph_module.meta["kv_cache_spec"]])
    return out


def _save_bad(name: str, path) -> str:
    cfg = tiny_config("qwen3")
    for k, v in BAD[name].items():
        setattr(cfg, k, v)
    path.mkdir()
    cfg.save_pretrained(path)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")  # loading it would fail
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    dirs = {arch: str(save_tiny(arch, root / arch)) for arch in ARCHS}
    dirs.update({name: _save_bad(name, root / name) for name in BAD})
    ranks, refs = run_ranks(_worker, 2, root / "out", dirs, meanwhile=lambda: _references(dirs))
    return ranks, refs


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_one_rank(runs, arch):
    ranks, refs = runs
    for r in ranks:
        for got, want in zip(r[arch]["logits"], refs[arch]["logits"]):
            assert_close_relative(got, want)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_one_rank(runs, arch):
    ranks, refs = runs
    assert ranks[0][arch]["tokens"] == refs[arch]["tokens"]
    assert ranks[1][arch]["tokens"] is None  # rank 1 followed rank 0's steps


@pytest.mark.parametrize("arch", ARCHS)
def test_each_rank_holds_half(runs, arch):
    ranks, refs = runs
    total = refs[arch]["bytes"]
    for r in ranks:
        res = r[arch]
        assert res["total"] == total
        assert res["bytes"] == res["rank_bytes"]
        # every sharded tensor halves; replicated ones (norms, routers, MLA's compressions) stay whole
        assert 2 * res["bytes"] == total + res["replicated"], res["plan"]
        assert res["replicated"] < 0.1 * total, res["plan"]
    assert all(2 * n == m for n, m in zip(ranks[0][arch]["n_kv"], refs[arch]["n_kv"]))  # the KV cache holds half


def test_plan_kinds(runs):
    ranks, _ = runs
    assert ranks[0]["llama"]["kinds"] == {"attention": 2, "mlp": 2, "embedding": 1, "lm_head": 1}
    assert ranks[0]["mixtral"]["kinds"] == {"experts": 2, "attention": 2, "embedding": 1, "lm_head": 1}
    # DeepSeek-V3: MLA heads, a dense first layer, routed experts and a shared expert (a gated MLP)
    assert ranks[0]["deepseek_v3"]["kinds"] == {"experts": 1, "attention": 2, "mlp": 2, "embedding": 1, "lm_head": 1}
    assert "experts 8 -> 4 (experts 4-7)" in ranks[1]["deepseek_v3"]["plan"]


def test_impossible_split_fails_before_loading(runs):
    ranks, _ = runs
    for r in ranks:
        assert r["bad_heads"] is not None and "3 attention heads do not split over 2 ranks" in r["bad_heads"]
        assert r["bad_kv_heads"] is not None and "3 KV heads neither split over 2 ranks" in r["bad_kv_heads"]

