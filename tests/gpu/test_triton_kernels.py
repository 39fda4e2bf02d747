"""Triton kernels on the GPU at real model shapes (Llama-3.2-1B: 32/8 heads, head_dim 64; Llama-3.1-8B:
head_dim 128), bf16, against the torch references; plus CUDA-graph capture of the attention op.

The small-shape tests in tests/backends/triton also run here on CUDA (fp32, bf16, fp16)."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from tests.backends.triton.paged import make_step, reference  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
HEADS = {"1b": dict(n=32, n_kv=8, d=64), "8b": dict(n=32, n_kv=8, d=128)}


def cuda_randn(*shape, dtype=BF16, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


@pytest.mark.parametrize("h", [2048, 4096])
@pytest.mark.parametrize("tokens", [1, 16, 2048])
def test_norms(tokens, h):
    x, res, w = cuda_randn(tokens, h, scale=2.0), cuda_randn(tokens, h), cuda_randn(h)
    assert_close(torch.ops.autodeploy.triton_rmsnorm(x, w, 1e-5, False), torch.ops.autodeploy.rmsnorm(x, w, 1e-5, False))
    normed, new_res = torch.ops.autodeploy.triton_fused_add_rmsnorm(x, res, w, 1e-5, True)
    assert torch.equal(new_res, x + res)
    assert_close(normed, torch.ops.autodeploy.rmsnorm(x + res, w, 1e-5, True))


@pytest.mark.parametrize("f", [8192, 14336])
@pytest.mark.parametrize("tokens", [1, 16, 2048])
def test_gated_act(tokens, f):
    gate_up = cuda_randn(tokens, 2 * f, scale=2.0)
    gate, up = gate_up[:, :f], gate_up[:, f:]
    want = torch.ops.autodeploy.gated_mlp_act(gate, up, "silu")
    assert_close(torch.ops.autodeploy.triton_gated_mlp_act(gate.contiguous(), up.contiguous(), "silu"), want)
    assert_close(torch.ops.autodeploy.triton_fused_gated_mlp_act(gate_up, "silu"), want)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape", ["1b", "8b"])
def test_rope(shape, interleaved):
    n, n_kv, d = HEADS[shape]["n"], HEADS[shape]["n_kv"], HEADS[shape]["d"]
    q, k = cuda_randn(2, 300, n, d), cuda_randn(2, 300, n_kv, d)
    ang = torch.rand(1, 300, d // 2, device="cuda") * 100
    cos, sin = torch.cat([ang, ang], -1).cos().to(BF16), torch.cat([ang, ang], -1).sin().to(BF16)
    want = torch.ops.autodeploy.rope(q, k, cos, sin, interleaved)
    got = torch.ops.autodeploy.triton_rope(q, k, cos, sin, interleaved)
    for g, w in zip(got, want):
        assert_close(g, w)
    torch.ops.autodeploy.triton_rope_(q, k, cos, sin, interleaved)
    assert torch.equal(q, got[0]) and torch.equal(k, got[1])  # in place computes the same values


def _features(name):
    return {"plain": {}, "window+sinks+softcap": dict(window=256, softcap=30.0, sinks=True)}[name]


@pytest.mark.parametrize("features", ["plain", "window+sinks+softcap"])
@pytest.mark.parametrize("page_size", [16, 64])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("shape", ["1b", "8b"])
def test_decode_attention(shape, batch, page_size, features):
    torch.manual_seed(batch)
    ctx = torch.randint(1, 3000, (batch,)).tolist()
    step = make_step([(1, c) for c in ctx], **HEADS[shape], page_size=page_size, dtype=BF16)
    f = _features(features)
    sinks = cuda_randn(HEADS[shape]["n"]) if f.get("sinks") else None
    args = step.args()
    out = torch.ops.autodeploy.triton_cached_attention(*args, sinks, None, f.get("window"), f.get("softcap"))
    want, kc, _ = reference(step, sinks, None, f.get("window"), f.get("softcap"))
    assert_close(out, want.to(BF16), BF16)
    assert torch.equal(args[3], kc.to(BF16))


@pytest.mark.parametrize("features", ["plain", "window+sinks+softcap"])
@pytest.mark.parametrize("shape", ["1b", "8b"])
def test_prefill_attention(shape, features):
    chunks = [(700, 0), (300, 900), (129, 64), (1, 50), (1, 2000)]  # whole, chunked, decodes
    step = make_step(chunks, **HEADS[shape], page_size=64, dtype=BF16)
    f = _features(features)
    sinks = cuda_randn(HEADS[shape]["n"]) if f.get("sinks") else None
    out = torch.ops.autodeploy.triton_cached_attention(*step.args(), sinks, None, f.get("window"), f.get("softcap"))
    want, _, _ = reference(step, sinks, None, f.get("window"), f.get("softcap"))
    assert_close(out, want.to(BF16), BF16)


def test_decode_attention_replays_in_a_cuda_graph():
    """No host sync and no shape-dependent launch: a captured decode step replays with new lengths."""
    step = make_step([(1, 100), (1, 2000), (1, 7)], **HEADS["1b"], page_size=64, dtype=BF16, extra_pages=40)
    q, k, v, kc, vc, seq_lens, cu, pos, lens, table, slots = step.args()
    op = torch.ops.autodeploy.triton_cached_attention
    op(q, k, v, kc, vc, seq_lens, cu, pos, lens, table, slots, None, None, None, None)  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(q, k, v, kc, vc, seq_lens, cu, pos, lens, table, slots, None, None, None, None)
    lens.sub_(torch.tensor([50, 1000, 3], dtype=lens.dtype, device="cuda"))  # shorter contexts, same buffers
    pos.copy_(lens - 1)
    slots.copy_((table.gather(1, (pos // 64).long()[:, None])[:, 0] * 64 + pos % 64).long())
    graph.replay()
    i = step.info
    i.cache_lens, i.input_pos, i.slot_mapping = lens.clone(), pos.clone(), slots.clone()
    want, _, _ = reference(step)
    assert_close(out, want.to(BF16), BF16)
