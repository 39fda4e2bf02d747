"""shard_tensor_parallel / shard_experts through check_transform, on each of 2 gloo ranks.

Small modules written with the canonical ops (what CANONICALIZE leaves) are exported with their
weights; each rank runs the transform (its slice of every weight, collectives inserted) and
check_transform compares the rank's graph output with eager at two shapes. The collectives run
for real, so the output equals eager only if the slices and the all_reduce / all_gather add up.

    case                 what it covers
    gqa                  KV heads split; literal view / reshape sizes rewritten; biases on q/k/v
                         and o (o's added once, after the all_reduce); embedding + lm_head vocab-parallel
    gqa_replicated       1 KV head over 2 ranks (replicated), attention sinks sliced per head
    fused_qkv            one q/k/v GEMM split by sizes: three ranges of its rows per rank
    fused_slices         Phi-3's fused q/k/v cut by slices and gate_up by chunk: local offsets
    experts_ep           autodeploy::moe -> moe_ep (experts 0-1 / 2-3) + all_reduce, biases per expert
    experts_tp           TP inside experts: gate/up rows, down columns, down bias on rank 0 only
    experts_tp_gptoss    interleaved gate/up stored transposed [E, h, 2f] (GPT-OSS), TP
    shared_expert        routed experts (EP) + a shared gated MLP (TP): their two all_reduces merged
    tp_plan_mlp          a plain fc1 -> gelu -> fc2 MLP no heuristic covers, split by a recipe tp_plan
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn
from torch.export import Dim

from tests.distributed.spawn import run_ranks

H, D, V, F = 32, 8, 64, 48
ops = torch.ops.autodeploy


def _rope_tables(pos: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[..., None].float() * inv  # [b, s, d/2]
    emb = torch.cat([ang, ang], dim=-1)  # [b, s, d]
    return emb.cos(), emb.sin()


class Decoder(nn.Module):
    """embedding ─ rmsnorm ─ q/k/v ─ rope ─ attention ─ o (+x) ─ rmsnorm ─ gated MLP (+x) ─ lm_head."""

    def __init__(self, n: int = 4, n_kv: int = 2, bias: bool = False, sinks: bool = False, fused: str = ""):
        super().__init__()
        self.n, self.n_kv, self.fused = n, n_kv, fused
        self.embed = nn.Embedding(V, H)
        if fused:
            self.qkv = nn.Linear(H, (n + 2 * n_kv) * D, bias=bias)
        else:
            self.q, self.k, self.v = (nn.Linear(H, m * D, bias=bias) for m in (n, n_kv, n_kv))
        self.o = nn.Linear(n * D, H, bias=bias)
        self.sinks = nn.Parameter(torch.randn(n)) if sinks else None
        if fused == "slices":  # Phi-3: one gate_up GEMM, chunked
            self.gate_up = nn.Linear(H, 2 * F, bias=False)
        else:
            self.gate, self.up = nn.Linear(H, F, bias=False), nn.Linear(H, F, bias=False)
        self.down = nn.Linear(F, H, bias=bias)
        self.norm1, self.norm2 = nn.Parameter(1 + 0.1 * torch.randn(H)), nn.Parameter(1 + 0.1 * torch.randn(H))
        self.head = nn.Linear(H, V, bias=False)

    def forward(self, ids, pos):
        b, s = ids.shape
        x = self.embed(ids)  # [b, s, H]
        h = ops.rmsnorm(x, self.norm1, 1e-6, False)
        if self.fused == "split":
            q, k, v = self.qkv(h).split([self.n * D, self.n_kv * D, self.n_kv * D], dim=-1)
        elif self.fused == "slices":  # Phi-3 slices its fused q/k/v output
            qkv, nq, nk = self.qkv(h), self.n * D, self.n_kv * D
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nk], qkv[..., nq + nk :]
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        q = q.view(b, s, self.n, D)  # literal head counts: rewritten to the local ones
        k, v = k.view(b, s, self.n_kv, D), v.view(b, s, self.n_kv, D)
        cos, sin = _rope_tables(pos, D)
        q, k = ops.rope(q, k, cos, sin, False)
        a = ops.attention(q, k, v, self.sinks, D**-0.5, True, None, None)  # [b, s, n, D]
        x = x + self.o(a.reshape(b, s, self.n * D))
        h = ops.rmsnorm(x, self.norm2, 1e-6, False)
        gate, up = self.gate_up(h).chunk(2, dim=-1) if self.fused == "slices" else (self.gate(h), self.up(h))
        x = x + self.down(ops.gated_mlp_act(gate, up, "silu"))
        return self.head(x)  # [b, s, V]


class Experts(nn.Module):
    """router ─ autodeploy::moe over E experts (optionally biased, GPT-OSS-style transposed storage)."""

    def __init__(self, e: int = 4, f: int = 16, bias: bool = False, gptoss: bool = False):
        super().__init__()
        self.gptoss = gptoss
        self.router = nn.Linear(H, e, bias=False)
        shape_gu, shape_d = ((e, H, 2 * f), (e, f, H)) if gptoss else ((e, 2 * f, H), (e, H, f))
        self.w_gate_up = nn.Parameter(0.2 * torch.randn(shape_gu))
        self.w_down = nn.Parameter(0.2 * torch.randn(shape_d))
        self.b_gate_up = nn.Parameter(0.1 * torch.randn(e, 2 * f)) if bias else None
        self.b_down = nn.Parameter(0.1 * torch.randn(e, H)) if bias else None

    def forward(self, x):  # x [t, H]
        w_gu, w_d = self.w_gate_up, self.w_down
        if self.gptoss:
            w_gu, w_d = w_gu.transpose(1, 2), w_d.transpose(1, 2)  # logical [E, 2f, H], [E, H, f]
        act = "swiglu_clamped" if self.gptoss else "silu"
        return ops.moe(x, self.router(x), w_gu, w_d, self.b_gate_up, self.b_down, None, top_k=2,
                       normalize=not self.gptoss, act=act, interleaved_gate_up=self.gptoss,
                       order="topk_then_softmax" if self.gptoss else "softmax_then_topk")


class SharedExpertMoE(nn.Module):
    """DeepSeek's block: routed experts plus a shared gated MLP, added (their two sums become one)."""

    def __init__(self):
        super().__init__()
        self.experts = Experts()
        self.gate, self.up, self.down = nn.Linear(H, F, bias=False), nn.Linear(H, F, bias=False), nn.Linear(F, H, bias=False)

    def forward(self, x):  # x [b, s, H]
        b, s, _ = x.shape
        routed = self.experts(x.view(-1, H)).view(b, s, H)
        return routed + self.down(ops.gated_mlp_act(self.gate(x), self.up(x), "silu"))


class PlainMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(H, F), nn.Linear(F, H)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _ids(b, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, s), generator=g), torch.arange(s).expand(b, s)


def _run_case(name: str) -> None:
    import autodeploy.distributed.collectives  # noqa: F401  (registers the ops counted below)
    import autodeploy.distributed.moe_ep  # noqa: F401
    from autodeploy.graph import aten
    from autodeploy.recipe import load_recipe
    from tests.helpers.transform_check import check_transform

    AR, AG, MOE, EP = ops.all_reduce.default, ops.all_gather.default, ops.moe.default, ops.moe_ep.default
    torch.manual_seed(0)  # both ranks build the same weights
    bs = {0: Dim("b", min=1, max=8), 1: Dim("s", min=2, max=32)}
    seq = (bs, bs)
    toks = {0: Dim("t", min=2, max=64)}

    def recipe(**transforms):
        over = {"runtime.world_size": 2} | {f"transforms.{k}": v for k, v in transforms.items()}
        return load_recipe("cpu", over)

    if name in ("gqa", "gqa_replicated", "fused_qkv", "fused_slices"):
        kw = {"gqa": dict(bias=True), "gqa_replicated": dict(n_kv=1, sinks=True),
              "fused_qkv": dict(fused="split", bias=True), "fused_slices": dict(fused="slices")}[name]
        gm = check_transform(Decoder(**kw), _ids(2, 6), "shard_tensor_parallel", before={AR: 0, AG: 0},
                             after={AR: 3, AG: 1, aten.embedding: 1}, matches=4, second_inputs=_ids(3, 9, 1),
                             dynamic_shapes=seq, recipe=recipe())
        params = dict(gm.named_parameters())
        n_kv_local = 1
        assert params["embed.weight"].shape == (V // 2, H) and params["head.weight"].shape == (V // 2, H)
        if name.startswith("fused"):
            assert params["qkv.weight"].shape == ((2 + 2 * n_kv_local) * D, H)
            if name == "fused_slices":
                assert params["gate_up.weight"].shape == (F, H)  # half of gate, half of up
        else:
            assert params["q.weight"].shape == (2 * D, H) and params["k.weight"].shape == (n_kv_local * D, H)
        assert params["o.weight"].shape == (H, 2 * D) and params["down.weight"].shape == (H, F // 2)
        assert not [n for n in gm.graph.nodes if n.target is aten.chunk.default]  # chunk -> local split sizes
        if name == "gqa_replicated":
            assert params["sinks"].shape == (2,)
        if name == "gqa":
            assert params["o.bias"].shape == (H,)  # whole: added after the sum
    elif name.startswith("experts"):
        mode = "ep" if name == "experts_ep" else "tp"
        gptoss = name == "experts_tp_gptoss"
        module = Experts(bias=True, gptoss=gptoss)
        x1, x2 = torch.randn(10, H), torch.randn(23, H)
        after = {AR: 1, MOE: 0, EP: 1} if mode == "ep" else {AR: 1, MOE: 1, EP: 0}
        gm = check_transform(module, [x1], "shard_experts", before={MOE: 1, AR: 0}, after=after, matches=1,
                             second_inputs=[x2], dynamic_shapes=(toks,), recipe=recipe(shard_experts={"mode": mode}))
        p = dict(gm.named_parameters())
        if mode == "ep":
            assert p["w_gate_up"].shape == (2, 32, H) and p["b_down"].shape == (2, H)
        elif gptoss:
            assert p["w_gate_up"].shape == (4, H, 16) and p["w_down"].shape == (4, 8, H)
        else:
            assert p["w_gate_up"].shape == (4, 16, H) and p["w_down"].shape == (4, H, 8)
    elif name == "shared_expert":
        x1, x2 = torch.randn(2, 5, H), torch.randn(3, 7, H)
        check_transform(SharedExpertMoE(), [x1], ["shard_experts", "shard_tensor_parallel"],
                        before={AR: 0, MOE: 1}, after={AR: 1, EP: 1}, matches=2, second_inputs=[x2],
                        dynamic_shapes=(bs,), recipe=recipe())
    elif name == "tp_plan_mlp":
        x1, x2 = torch.randn(2, 5, H), torch.randn(3, 7, H)
        plan = {"fc1": "colwise", "fc2": "rowwise"}
        gm = check_transform(PlainMLP(), [x1], "shard_tensor_parallel", before={AR: 0}, after={AR: 1}, matches=1,
                             second_inputs=[x2], dynamic_shapes=(bs,),
                             recipe=recipe(shard_tensor_parallel={"tp_plan": plan}))
        p = dict(gm.named_parameters())
        assert p["fc1.weight"].shape == (F // 2, H) and p["fc1.bias"].shape == (F // 2,)
        assert p["fc2.weight"].shape == (H, F // 2) and p["fc2.bias"].shape == (H,)
    else:
        raise KeyError(name)


CASES = ["gqa", "gqa_replicated", "fused_qkv", "fused_slices", "experts_ep", "experts_tp", "experts_tp_gptoss", "shared_expert",
         "tp_plan_mlp"]


def _worker(rank: int, out, cases: list[str]) -> dict[str, str | None]:
    from autodeploy.distributed import dist

    dist.init_distributed(2, "cpu")
    failures = {}
    for case in cases:  # both ranks run the same cases in the same order: their collectives meet
        try:
            _run_case(case)
            failures[case] = None
        except Exception:  # noqa: BLE001 (reported per case by the parent)
            failures[case] = traceback.format_exc()
    return failures


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    ranks, _ = run_ranks(_worker, 2, tmp_path_factory.mktemp("shard"), CASES)
    return ranks


@pytest.mark.parametrize("case", CASES)
def test_case(outcomes, case):
    for rank, failures in enumerate(outcomes):
        assert failures[case] is None, f"rank {rank}:\n{failures[case]}"
