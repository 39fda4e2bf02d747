"""The quantized linear ops: SQNR against the full-precision linear, packing, shapes and dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autodeploy.quantization import fp8, int4, int8
from autodeploy.quantization.config import Fp8Config, Int4WeightOnlyConfig, Int8WeightOnlyConfig
from autodeploy.quantization.metrics import sqnr
from autodeploy.quantization.registry import method_for

N, K = 96, 256


def _layer(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g) * 0.1
    x = torch.randn(3, 5, K, generator=g)
    x[..., 7] *= 25.0  # a few outlier channels, as post-norm LLM activations have
    x[..., 100] *= 10.0
    return x, w, b


def _quantized_out(cfg, x, w, b):
    m = method_for(cfg)
    p = m.quantize(w, cfg)
    for name, (shape, dtype) in m.params(N, K, w.dtype, cfg).items():
        assert tuple(p[name].shape) == shape and p[name].dtype == dtype, name
    return m.op(*m.call_args(x, p, b, cfg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp8_sqnr(seed):
    x, w, b = _layer(seed)
    ref = F.linear(x, w, b)
    weight_only = _quantized_out(Fp8Config(activation_scheme="none"), x, w, b)
    assert sqnr(weight_only, ref) >= 30.0
    # e4m3 activations add a second rounding of the same size (3 mantissa bits, ~31.5 dB each):
    # the product sits about 3 dB lower, whatever the distribution.
    dynamic = _quantized_out(Fp8Config(), x, w, b)
    assert sqnr(dynamic, ref) >= 27.0
    per_tensor = _quantized_out(Fp8Config(granularity="per_tensor", activation_scheme="none"), x, w, b)
    assert sqnr(per_tensor, ref) >= 27.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_weight_only_sqnr(seed):
    x, w, b = _layer(seed)
    assert sqnr(_quantized_out(Int8WeightOnlyConfig(), x, w, b), F.linear(x, w, b)) >= 30.0


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_sqnr_by_group_size(group_size):
    x, w, b = _layer()
    got = sqnr(_quantized_out(Int4WeightOnlyConfig(group_size=group_size), x, w, b), F.linear(x, w, b))
    assert got >= 15.0
    if group_size == 32:  # smaller groups fit tighter ranges
        assert got > sqnr(_quantized_out(Int4WeightOnlyConfig(group_size=128), x, w, b), F.linear(x, w, b))


def test_int4_pack_roundtrip_and_layout():
    q = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    packed = int4.pack(q)
    assert packed.shape == (4, 32) and packed.dtype == torch.uint8
    assert torch.equal(int4.unpack(packed), q)
    assert torch.equal(packed[:, 3] & 0xF, q[:, 3]) and torch.equal(packed[:, 3] >> 4, q[:, 35])  # half-split


def test_int4_grid_is_exact_on_representable_weights():
    scales = torch.rand(8, 2) + 0.5
    zeros = torch.randint(0, 16, (8, 2)).float()
    q = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    q[:, [0, 32]], q[:, [1, 33]] = 0, 15  # every group spans the whole grid, so its range gives back its scale
    w = int4.dequantize_q(q, scales, zeros, 32)
    p = int4.quantize(w, 32)
    assert torch.allclose(int4.dequantize(p["qweight"], p["scales"], p["zeros"], 32), w, atol=1e-5)


def test_zero_rows_stay_zero():
    w = torch.zeros(16, 128)
    for cfg in (Fp8Config(), Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=64)):
        m = method_for(cfg)
        assert torch.equal(m.dequantize(m.quantize(w, cfg), cfg, torch.float32), w)


@pytest.mark.parametrize("cfg", [Fp8Config(), Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32)])
def test_bf16_activations_keep_their_dtype(cfg):
    x, w, b = _layer()
    out = _quantized_out(cfg, x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (3, 5, N)
    assert sqnr(out, F.linear(x, w, b)) >= (15.0 if isinstance(cfg, Int4WeightOnlyConfig) else 25.0)


def test_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, b = _layer()
    cfg = Int4WeightOnlyConfig(group_size=64)
    m = method_for(cfg)
    p = m.quantize(w, cfg)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = m.op(*m.call_args(torch.empty(7, K), p, None, cfg))
    assert out.shape == (7, N)


def test_int8_and_fp8_stacks_scale_per_expert_channel():
    w = torch.randn(3, 10, 16)  # [E, N, K]
    for mod in (int8, fp8):
        p = mod.quantize(w, dim=-1) if mod is int8 else mod.quantize(w, "per_channel", dim=-1)
        assert p["weight_scale"].shape == (3, 10, 1)
        deq = torch.ops.autodeploy.dequantize_per_channel(p["weight"], p["weight_scale"], torch.float32)
        assert sqnr(deq, w) >= 30.0
