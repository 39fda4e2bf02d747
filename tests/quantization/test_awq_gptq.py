"""AWQ and GPTQ on one layer: both beat round-to-nearest int4 (GPTQ also e4m3) on inputs with activation outliers."""

from __future__ import annotations

import pytest
import torch

from autodeploy.quantization import awq, fp8, gptq, int4
from autodeploy.quantization.metrics import sqnr

N, K = 128, 256


def _layer(seed: int):
    """A weight and calibration / held-out inputs shaped like a post-norm LLM linear's: a shared
    low-rank structure across tokens and a handful of channels 10-50x larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) / K**0.5
    basis = torch.randn(16, K, generator=g)

    def inputs(n):
        x = torch.randn(n, 16, generator=g) @ basis * 0.5 + torch.randn(n, K, generator=g)
        x[:, :4] *= torch.tensor([50.0, 30.0, 20.0, 10.0])
        return x

    return w, inputs(512), inputs(256)


def _mse(x, w, wq):
    return (x @ w.T - x @ wq.T).pow(2).mean().item()


def _deq(p, g):
    return int4.dequantize(p["qweight"], p["scales"], p["zeros"], g)


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_beats_rtn(group_size, seed):
    w, x_cal, x_test = _layer(seed)
    rtn = _mse(x_test, w, _deq(int4.quantize(w, group_size), group_size))
    q = gptq.quantize(w, gptq.hessian(x_cal), group_size)
    got = _mse(x_test, w, _deq(q, group_size))
    assert got < 0.8 * rtn, f"GPTQ {got:.3e} vs RTN {rtn:.3e}"


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("seed", [0, 1])
def test_awq_beats_rtn(group_size, seed):
    w, x_cal, x_test = _layer(seed)
    rtn = _mse(x_test, w, _deq(int4.quantize(w, group_size), group_size))
    s, (p,) = awq.quantize_group(x_cal, [w], group_size)
    got = (x_test @ w.T - (x_test / s) @ _deq(p, group_size).T).pow(2).mean().item()
    assert got < 0.8 * rtn, f"AWQ {got:.3e} vs RTN {rtn:.3e}"


def test_awq_clip_only_still_helps():
    w, x_cal, x_test = _layer(3)
    rtn = _mse(x_test, w, _deq(int4.quantize(w, 128), 128))
    s, (p,) = awq.quantize_group(x_cal, [w], 128, scale_input=False)
    assert s is None and _mse(x_test, w, _deq(p, 128)) < rtn


def test_awq_group_shares_one_scale():
    w, x_cal, _ = _layer(4)
    s, parts = awq.quantize_group(x_cal, [w[:64], w[64:]], 64)
    assert s.shape == (K,) and len(parts) == 2 and parts[0]["qweight"].shape == (64, K // 2)


def test_gptq_dead_inputs_and_packing():
    w, x_cal, _ = _layer(5)
    x_cal[:, 10] = 0.0  # an input channel never active in calibration
    q = gptq.quantize(w, gptq.hessian(x_cal), 64)
    assert q["qweight"].shape == (N, K // 2) and q["scales"].shape == (N, K // 64)
    assert torch.isfinite(_deq(q, 64)).all()


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_fp8_beats_rtn_on_the_same_grid(granularity, seed):
    """Same e4m3 tensors and scales as fp8.quantize, a better output: held-out output SQNR 31.6 dB
    (rtn) -> 36.4-37.4 dB measured (gptq); asked for 2 dB."""
    w, x_cal, x_test = _layer(seed)
    rtn = fp8.quantize(w, granularity)
    q = gptq.quantize_fp8(w, gptq.hessian(x_cal), granularity)
    assert q["weight"].dtype == fp8.DTYPE and torch.equal(q["weight_scale"], rtn["weight_scale"])
    ref = x_test @ w.T
    got, base = (sqnr(x_test @ fp8.dequantize(**p).T, ref) for p in (q, rtn))
    assert got >= base + 2.0, f"GPTQ {got:.1f} dB vs RTN {base:.1f} dB"


def test_gptq_int4_feedback_matches_plain_rounding_without_correlation():
    """With H = I (inputs uncorrelated, equal power) the feedback has nothing to move: GPTQ == RTN."""
    w, _, _ = _layer(6)
    q = gptq.quantize(w, torch.eye(K), 64, damp=0.0)
    assert torch.equal(_deq(q, 64), _deq(int4.quantize(w, 64), 64))
    q8 = gptq.quantize_fp8(w, torch.eye(K), damp=0.0)
    assert torch.equal(q8["weight"].float(), fp8.quantize(w)["weight"].float())
