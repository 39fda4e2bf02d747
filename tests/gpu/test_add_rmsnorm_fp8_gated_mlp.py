"""The FP8 gated MLP in 3 launches (norm + quantize, gate_up GEMV with the activation in its epilogue, down GEMV
X_MODE 3) on the GPU at Llama-3.1-8B's shapes (K 4096, F 14336, N 4096, bf16): h and its amaxes bit-identical to
the plain gate_up GEMV (X_MODE 2) + the activation / amax kernel, out and the new residual bit-identical to the
two folds' twins (4 launches), close to the reference; the non-default configs, a CUDA-graph replay, and
prefill rows on the two folds' path.

The small-shape tests in tests/backends/triton/test_add_rmsnorm_fp8_gated_mlp.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import add_rmsnorm_fp8_gated_mlp as fused  # noqa: E402
from autodeploy.backends.triton import add_rmsnorm_fp8_linear as norm_fp8  # noqa: E402
from autodeploy.backends.triton import fp8_gemv  # noqa: E402
from autodeploy.backends.triton import gated_act_fp8_linear as act_fp8  # noqa: E402
from autodeploy.quantization import fp8  # noqa: E402
from autodeploy.quantization.metrics import sqnr  # noqa: E402
from tests.helpers.decode_shapes import SHAPES_8B, activations  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
OP = torch.ops.autodeploy.triton_add_rmsnorm_fp8_gated_mlp
REF = torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp
EPS = 1e-5
N, F = SHAPES_8B["down"]  # 4096, 14336
K = SHAPES_8B["gate_up"][1]  # 4096


def _operands(m, bias=False):
    x, res = activations(m, K), 4.0 * activations(m, K)  # [m, K] each
    nw = (torch.rand(K, device="cuda") + 0.5).to(BF16)
    gu = fp8.quantize(torch.randn(2 * F, K, device="cuda") * 2.0 / K**0.5)
    dn = fp8.quantize(torch.randn(N, F, device="cuda") / F**0.5)
    b = (lambda n: torch.randn(n, device="cuda").to(BF16)) if bias else (lambda n: None)
    return x, res, nw, gu["weight"], gu["weight_scale"], b(2 * F), dn["weight"], dn["weight_scale"], b(N)


def _two_folds(x, res, nw, w, s, b, act, wd, sd, bd):
    """The 4-launch path at its default configs -> (gate_up [m, 2F], h [m, F], out [m, N], new residual)."""
    gate_up, new_res = norm_fp8.launch(x, res, nw, EPS, False, w, s, b)
    h = act_fp8.gated_act_block_amax(gate_up[:, :F], gate_up[:, F:], act)[0]
    return gate_up, h, act_fp8.launch(gate_up[:, :F], gate_up[:, F:], act, wd, sd, bd), new_res


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 4])
def test_8b_bit_identical_to_the_two_folds(m, act):
    x, res, nw, w, s, b, wd, sd, bd = _operands(m)
    _, want_h, want_out, want_res = _two_folds(x, res, nw, w, s, b, act, wd, sd, bd)
    assert fp8_gemv.launch_config(m, 2 * F, K, torch.cuda.get_device_properties(0).multi_processor_count)["bk"] == 256
    xq, xs, _ = norm_fp8.add_rmsnorm_quantize(x, res, nw, EPS, False)
    h, amax = fused.gated_gemv(xq, xs, w, s, b, act, BF16)  # the default config: BN 32, one [64, 256] tile a step
    assert amax.shape == (m, F // 32)
    assert torch.equal(h, want_h), f"{(h != want_h).sum().item()} of {h.numel()} elements differ"
    assert torch.equal(amax, h.float().abs().view(m, -1, 32).amax(-1))
    out, new_res = OP(x, res, nw, EPS, False, w, s, b, True, act, wd, sd, bd, True)
    assert torch.equal(out, want_out) and torch.equal(new_res, want_res)
    ref_out, ref_res = REF(x, res, nw, EPS, False, w, s, b, True, act, wd, sd, bd, True)
    assert torch.equal(new_res, ref_res)
    assert sqnr(out, ref_out) >= 30.0  # the reference rounds the normed row and act(gate) once more: codes a step off


@pytest.mark.parametrize("cfg", [dict(bn=64), dict(bk=512, num_stages=3), dict(bn=64, bk=512),
                                 dict(interleave=False), dict(fp8_dot=False)],
                         ids=["bn64", "bk512", "bn64 bk512", "two dots", "fp16 products"])
def test_other_configs_close_and_bias(cfg):
    # other tiles may sum in another order or on another MMA instruction: h is close, not bit for bit
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, bias=True)
    gate_up, want_h, want_out, _ = _two_folds(x, res, nw, w, s, b, "silu", wd, sd, bd)
    xq, xs, _ = norm_fp8.add_rmsnorm_quantize(x, res, nw, EPS, False)
    h, amax = fused.gated_gemv(xq, xs, w, s, b, "silu", BF16, cfg)
    assert sqnr(h, want_h) >= 40.0 and amax.shape == (2, -(-F // dict(fused.CONFIG, **cfg)["bn"]))
    out, _ = fused.launch(x, res, nw, EPS, False, w, s, b, "silu", wd, sd, bd, cfg)
    assert sqnr(out, want_out) >= 35.0
    exact = torch.equal(h, want_h)
    print(f"{cfg}: h bit-identical to the two folds: {exact}")


def test_cuda_graph_capture_and_replay():
    x, res, nw, w, s, b, wd, sd, bd = _operands(1)
    OP(x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got, got_res = OP(x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)
    for _ in range(3):
        x.copy_(activations(1, K))
        got.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _, _, want, want_res = _two_folds(x, res, nw, w, s, b, "silu", wd, sd, bd)
        assert torch.equal(got, want) and torch.equal(got_res, want_res)


def test_prefill_rows_take_the_two_folds():
    x, res, nw, w, s, b, wd, sd, bd = _operands(40, bias=True)
    out, new_res = OP(x.view(2, 20, K), res.view(2, 20, K), nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)
    assert out.shape == (2, 20, N) and new_res.shape == (2, 20, K)
    ref_out, _ = REF(x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)
    assert sqnr(out.view(40, N), ref_out) >= 30.0
