"""autodeploy::triton_add_rmsnorm_fp8_gated_mlp (the norm + quantize kernel, the gate_up GEMV applying the
activation in its epilogue and writing block amaxes, the down GEMV in X_MODE 3) vs the path it replaces: the
plain gate_up GEMV (X_MODE 2) then _gated_act_amax_kernel (h and amaxes bit for bit), and the two folds' twins
(out and the new residual bit for bit); vs the reference autodeploy::add_rmsnorm_fp8_gated_mlp; its fallbacks
and the 4-launch candidate registered beside it. Interpreted on CPU, compiled on CUDA.

The interpreter's tl.dot is a BLAS matmul whose fp32 sums can depend on a row's place in the tile (one
element in ~500 a ulp apart), which the GPU's MMA does not: so h is compared with the plain GEMV run on the
weight laid out as the gated kernel tiles it (its rows at the same tile places), and the end-to-end checks
use operands whose dot products are exact in any order (`_exact_operands`)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import add_rmsnorm_fp8_gated_mlp as fused
from autodeploy.backends.triton import add_rmsnorm_fp8_linear as norm_fp8
from autodeploy.backends.triton import fp8_gemv
from autodeploy.backends.triton import gated_act_fp8_linear as act_fp8
from autodeploy.profiler.candidates import backends_for
from autodeploy.quantization import fp8
from tests.backends.triton.cases import DEVICE, randn
from tests.helpers.tolerances import assert_close, assert_fp8_close

OP = torch.ops.autodeploy.triton_add_rmsnorm_fp8_gated_mlp
REF = torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp
EPS = 1e-5
BF16_FP32 = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def _operands(rows, k, f, n, dtype=torch.float32, bias=False, granularity="per_channel"):
    """x, residual [M, K], norm weight [K], gate_up e4m3 [2F, K] + scale + bias [2F]?, down e4m3 [N, F] + scale + bias?"""
    x, res = randn(rows, k, dtype=dtype), randn(rows, k, dtype=dtype, scale=3.0)
    x[:, 5] *= 20.0  # an outlier channel sets each token's scale
    nw = (torch.rand(k) + 0.5).to(device=x.device, dtype=dtype)
    gu = fp8.quantize(torch.randn(2 * f, k) * 2.0 / k**0.5, granularity)  # gate ~ N(0, 4): the activation's tails
    dn = fp8.quantize(torch.randn(n, f) / f**0.5, granularity)
    return (x, res, nw, gu["weight"].to(DEVICE), gu["weight_scale"].to(DEVICE), randn(2 * f, dtype=dtype) if bias else None,
            dn["weight"].to(DEVICE), dn["weight_scale"].to(DEVICE), randn(n, dtype=dtype) if bias else None)


def _exact_operands(rows, k, f, n, dtype=torch.float32, bias=False):
    """_operands whose gate_up dot products are exact in any summation order: x + residual is +-1 / +-2 (norm weight
    1, so every e4m3 code of x is +-224 or +-448) and every gate_up row's entries are +-1 / +-0.5 (codes +-448 or
    +-224): each product is 49 * 2^10 * {1, 2, 4}, and K = 128 of them sum exactly in fp32."""
    g = torch.Generator().manual_seed(rows * 7 + f)
    sign = lambda *s: torch.randint(0, 2, s, generator=g) * 2 - 1  # noqa: E731
    mag = lambda *s: torch.randint(0, 2, s, generator=g) + 1.0  # noqa: E731
    assert k <= 128
    x = (sign(rows, k) * mag(rows, k)).to(device=DEVICE, dtype=dtype)
    res = torch.zeros_like(x)
    nw = torch.ones(k, device=DEVICE, dtype=dtype)
    rows_scale = (torch.rand(2 * f, 1, generator=g) + 0.5) / 16  # per-channel scales of any value; gate ~ N(0, 1)
    gu = fp8.quantize(sign(2 * f, k) * mag(2 * f, k) / 2.0 * rows_scale)
    dn = fp8.quantize(torch.randn(n, f, generator=g) / f**0.5)
    b = (lambda m: randn(m, dtype=dtype)) if bias else (lambda m: None)
    return (x, res, nw, gu["weight"].to(DEVICE), gu["weight_scale"].to(DEVICE), b(2 * f), dn["weight"].to(DEVICE),
            dn["weight_scale"].to(DEVICE), b(n))


def _tiled(t: torch.Tensor, f: int, bn: int, interleave: bool) -> torch.Tensor:
    """gate_up rows (or their scales / bias) [2F, ..] laid out as the gated kernel's tiles hold them, for a plain GEMV
    with BN 2 bn (interleave: gate row c then up row c) or BN bn (two dots: gate rows, then up rows, each padded to
    whole tiles with zero rows, so gate and up row c sit at the same tile place c % bn)."""
    gate, up = t[:f], t[f:]
    if interleave:
        return torch.stack([gate, up], 1).reshape(t.shape)
    pad = -f % bn
    zeros = torch.zeros(pad, *t.shape[1:], dtype=t.dtype, device=t.device)
    return torch.cat([gate, zeros, up, zeros])


def _plain_pair(xq, xs, w, s, b, act, dtype, f, bn, bk, interleave):
    """The 4-launch path's middle: the plain gate_up GEMV (X_MODE 2, split 1, BK bk) on the tiled weight, then the
    activation + block amax kernel with bn-wide blocks -> (h [M, F], amaxes [M, cdiv(F, bn)])."""
    bytes_ = lambda t: _tiled(t.view(torch.uint8), f, bn, interleave).view(fp8.DTYPE)  # noqa: E731
    ws = s if s.numel() == 1 else _tiled(s.reshape(2 * f), f, bn, interleave)
    wb = None if b is None else _tiled(b, f, bn, interleave)
    cfg = dict(bn=2 * bn if interleave else bn, bk=bk, split=1, num_warps=4, num_stages=2)
    gu = fp8_gemv.launch_quantized(xq, xs, bytes_(w), ws, wb, dtype, cfg)  # [M, 2F (+ padding)]
    if interleave:
        gate, up = gu[:, 0::2].contiguous(), gu[:, 1::2].contiguous()
    else:
        fp = f + (-f % bn)
        gate, up = gu[:, :f], gu[:, fp:fp + f]
    return act_fp8.gated_act_block_amax(gate, up, act, bn)


@BF16_FP32
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("f, bn", [(192, 32), (160, 64)], ids=["F=192 BN=32", "F=160 BN=64: a partial tile"])
@pytest.mark.parametrize("interleave", [True, False], ids=["one tile", "two dots"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_h_and_amaxes_bit_identical_to_gemv_then_act(act, m, interleave, f, bn, bias, dtype):
    x, res, nw, w, s, b, *_ = _operands(m, 128, f, 16, dtype, bias)
    xq, xs, _ = norm_fp8.add_rmsnorm_quantize(x, res, nw, EPS, False)
    cfg = dict(bn=bn, bk=64, interleave=interleave, num_stages=2)
    h, amax = fused.gated_gemv(xq, xs, w, s, b, act, dtype, cfg)
    nb = -(-f // bn)
    assert h.shape == (m, f) and h.dtype == dtype and amax.shape == (m, nb) and amax.dtype == torch.float32
    want_h, want_amax = _plain_pair(xq, xs, w, s, b, act, dtype, f, bn, 64, interleave)
    assert torch.equal(h, want_h)
    assert torch.equal(amax, want_amax)
    assert torch.equal(amax, torch.stack([c.float().abs().amax(1) for c in h.split(bn, 1)], 1))  # 0 past F: none lost


def test_per_tensor_scale_and_gelu():
    x, res, nw, w, s, b, *_ = _operands(2, 128, 192, 16, bias=True, granularity="per_tensor")
    assert s.numel() == 1
    xq, xs, _ = norm_fp8.add_rmsnorm_quantize(x, res, nw, EPS, False)
    for interleave in (True, False):
        h, amax = fused.gated_gemv(xq, xs, w, s, b, "gelu", torch.float32, dict(bn=32, bk=64, interleave=interleave))
        want = _plain_pair(xq, xs, w, s, b, "gelu", torch.float32, 192, 32, 64, interleave)
        assert torch.equal(h, want[0]) and torch.equal(amax, want[1])


@BF16_FP32
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_out_bit_identical_to_the_two_folds(act, m, bias, dtype):
    # F = 192 with BN 128: a partial tile; the default BN 32 too. The 4-launch path: the two folds' twins
    ops = _exact_operands(m, 128, 192, 40, dtype, bias)
    x, res, nw, w, s, b, wd, sd, bd = ops
    gate_up, want_res = norm_fp8.launch(x, res, nw, EPS, False, w, s, b)
    want = act_fp8.launch(gate_up[:, :192], gate_up[:, 192:], act, wd, sd, bd)
    for cfg in (None, dict(bn=128, bk=64), dict(bn=32, bk=64, interleave=False)):
        out, new_res = fused.launch(x, res, nw, EPS, False, w, s, b, act, wd, sd, bd, cfg)
        assert out.dtype == dtype and torch.equal(out, want), cfg
        assert torch.equal(new_res, want_res)
    assert [torch.equal(t, u) for t, u in zip(OP(x, res, nw, EPS, False, w, s, b, True, act, wd, sd, bd, True),
                                               (want, want_res))] == [True, True]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("m", [1, 3])
def test_kernels_match_reference(m, offset, bias):
    x, res, nw, w, s, b, wd, sd, bd = _operands(m, 128, 192, 40, bias=bias)
    out, new_res = fused.launch(x, res, nw, EPS, offset, w, s, b, "silu", wd, sd, bd)
    ref_out, ref_res = REF(x, res, nw, EPS, offset, w, s, b, True, "silu", wd, sd, bd, True)
    assert out.shape == (m, 40) and new_res.shape == (m, 128)
    assert torch.equal(new_res, ref_res)
    assert_fp8_close(out, ref_out)  # the same codes (fp32): summation order apart


@pytest.mark.parametrize("lead", [(1, 1), (3, 1), (2, 8), (1, 17)], ids=["1 row", "3 rows", "16 rows", "17 rows"])
def test_op_three_kernels_up_to_16_rows(lead, monkeypatch):
    calls = []
    real = fused.gated_gemv
    monkeypatch.setattr(fused, "gated_gemv", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    rows = lead[0] * lead[1]
    x, res, nw, w, s, b, wd, sd, bd = _operands(rows, 128, 128, 24, bias=True)
    x, res = x.view(*lead, 128), res.view(*lead, 128)
    out, new_res = OP(x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)
    assert out.shape == (*lead, 24) and new_res.shape == (*lead, 128)
    assert bool(calls) == (rows <= 16)
    ref_out, ref_res = REF(x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True)
    assert_fp8_close(out, ref_out)
    assert torch.equal(new_res, ref_res)


def test_unsupported_calls_take_the_two_folds():
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, 128, 96, 24, bias=True)  # F = 96: the down GEMV needs F % 64
    assert not fused.supports(x, res, nw, w, s, b, True, "silu", wd, sd, bd, True)
    with pytest.raises(NotImplementedError, match="down: K = 96"):
        fused.launch(x, res, nw, EPS, False, w, s, b, "silu", wd, sd, bd)
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, 128, 128, 24, bias=True)
    assert fused.supports(x, res, nw, w, s, b, True, "silu", wd, sd, bd, True)
    assert not fused.supports(x, res, nw, w, s, b, True, "relu", wd, sd, bd, True)
    assert not fused.supports(x, res, nw, w[:-1], s[:-1], b[:-1], True, "silu", wd, sd, bd, True)  # odd rows
    cases = [(True, True), (False, True), (True, False)]  # weight-only FP8 on either projection: no codes there
    assert [fused.supports(x, res, nw, w, s, b, q1, "silu", wd, sd, bd, q2) for q1, q2 in cases] == [True, False, False]
    for q1, q2 in cases:
        args = (x, res, nw, EPS, False, w, s, b, q1, "gelu", wd, sd, bd, q2)
        out, new_res = OP(*args)
        ref_out, ref_res = REF(*args)
        (assert_fp8_close if q1 and q2 else assert_close)(out, ref_out)
        assert torch.equal(new_res, ref_res)


@pytest.mark.parametrize("m", [1, 20])
def test_two_folds_candidate_matches_reference(m):
    args = (*_operands(m, 128, 128, 37, bias=True)[:3], EPS, True)
    w_args = _operands(m, 128, 128, 37, bias=True)[3:]
    full = (*args, *w_args[:3], True, "silu", *w_args[3:], True)
    out, new_res = fused.TWO_FOLDS(*full)
    ref_out, ref_res = REF(*full)
    assert_fp8_close(out, ref_out)
    assert torch.equal(new_res, ref_res)


def test_fakes():
    # (opcheck's test_schema cannot run on e4m3 inputs: it multiplies them on the CPU)
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, 128, 128, 32, bias=True)
    for op in (OP.default, fused.TWO_FOLDS):
        torch.library.opcheck(op, (x, res, nw, EPS, False, w, s, b, True, "silu", wd, sd, bd, True),
                              test_utils=("test_faketensor",))


def test_backend_candidates_on_cuda():
    # the twin first (the --no-autotune choice), then the 4-launch path the autotuner times it against
    names = [(b.name, b.op) for b in backends_for(REF.default, torch.device("cuda"))]
    assert names[0] == ("triton", OP.default)
    assert [n for n, _ in names[1:]] == ["norm_gemv+act_gemv", "torch"]
    assert [b.name for b in backends_for(REF.default, torch.device("cpu"))] == ["torch"]
    x, res, nw, w, s, b, wd, sd, bd = _operands(1, 128, 64, 16)
    args = dict(x=x, residual=res, norm_weight=nw, eps=EPS, add_unit_offset=False, weight_gate_up=w, scale_gate_up=s,
                bias_gate_up=None, quantize_gate_up=True, act="silu", weight_down=wd, scale_down=sd, bias_down=None,
                quantize_down=True)
    backend = backends_for(REF.default, torch.device("cuda"))[0]
    assert backend.pdl and backend.can_run(args) and not backend.can_run(dict(args, quantize_down=False))
