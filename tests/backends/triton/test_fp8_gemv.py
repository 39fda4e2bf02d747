"""Triton FP8 decode GEMV vs autodeploy::fp8_linear (interpreted on CPU, compiled on CUDA): per-token
activation scales inside the kernel or in its prologue, fp8 or fp16 products, per-channel and per-tensor
weight scales, split K; the GEMV on rows quantized elsewhere or scaled by block amaxes (bit for bit the
prologue's); and its hookup as the Triton backend of fp8_linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import fp8_gemv
from autodeploy.backends.triton._common import tickets
from autodeploy.quantization import fp8
from autodeploy.quantization.metrics import sqnr
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close, assert_fp8_close

reference = torch.ops.autodeploy.fp8_linear


def _weights(n, k, granularity="per_channel", bias=False, dtype=torch.float32):
    p = fp8.quantize(torch.randn(n, k) / k**0.5, granularity)
    return p["weight"].to(DEVICE), p["weight_scale"].to(DEVICE), randn(n, dtype=dtype) if bias else None


def _x(m, k, dtype=torch.float32):
    x = randn(m, k, dtype=torch.float32)
    x[:, 7] *= 25.0  # an outlier channel sets each token's scale, as post-norm activations do
    return x.to(dtype)


def _ref(x, w, s, b, quantize_input=True):
    """The CPU reference in fp32 (the same e4m3 operands; on CUDA the reference would be torch._scaled_mm)."""
    out = reference(x.cpu().float(), w.cpu(), s.cpu(), None if b is None else b.cpu().float(), quantize_input)
    return out.to(x.device, x.dtype)


def _config(bn=16, bk=64, split=1, **kw):
    return dict(bn=bn, bk=bk, split=split, num_warps=4, num_stages=2) | kw


@dtypes
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("x_prologue", [False, True])
@pytest.mark.parametrize("fp8_dot", [True, False])
def test_matches_reference(fp8_dot, x_prologue, m, dtype):
    # N = 40: the last 16-row tile is 8 rows; K = 192 = 3 BK steps
    w, s, b = _weights(40, 192, bias=m == 5, dtype=dtype)
    x = _x(m, 192, dtype)
    out = fp8_gemv.launch(x, w, s, b, True, _config(x_prologue=x_prologue, fp8_dot=fp8_dot))
    assert out.shape == (m, 40) and out.dtype == dtype
    assert_fp8_close(out, _ref(x, w, s, b))


@pytest.mark.parametrize("x_prologue", [False, True])
def test_half_precision_activations(x_prologue):
    # bf16 / fp16 x: quantized from its own values, output rounded once to x's dtype
    w, s, b = _weights(48, 128, bias=True)
    for dtype in (torch.bfloat16, torch.float16):
        x = _x(3, 128, dtype)
        out = fp8_gemv.launch(x, w, s, b.to(dtype), True, _config(x_prologue=x_prologue))
        assert out.dtype == dtype
        assert_fp8_close(out, _ref(x, w, s, b.to(dtype)))


@dtypes
def test_per_tensor_scale_and_weight_only(dtype):
    w, s, b = _weights(24, 128, "per_tensor", bias=True, dtype=dtype)
    x = _x(2, 128, dtype)
    assert s.dim() == 0
    assert_fp8_close(fp8_gemv.launch(x, w, s, b, True, _config()), _ref(x, w, s, b))
    assert_close(fp8_gemv.launch(x, w, s, b, False, _config()), _ref(x, w, s, b, False))  # x as is


@dtypes
@pytest.mark.parametrize("split", [2, 3])
def test_split_k_partials_sum_to_reference(split, dtype):
    w, s, b = _weights(20, 320, bias=True, dtype=dtype)
    x = _x(3, 320, dtype)
    cfg = fp8_gemv.normalized(_config(split=split), 3, 20, 320)
    assert cfg["split"] == split
    for _ in range(2):  # the n tiles' last splits merge in the launch and leave the tickets at zero
        assert_fp8_close(fp8_gemv.launch(x, w, s, b, True, _config(split=split)), _ref(x, w, s, b))
        assert not tickets(torch.device(DEVICE), 1024)[:1024].any()


def _block_amax(x, block):
    """x [M, K] -> fp32 [M, cdiv(K, block)]: max |x| over each block of `block` columns (the last partial)."""
    return torch.stack([c.float().abs().amax(dim=1) for c in x.split(block, dim=1)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("split", [1, 3], ids=["unsplit", "split 3"])
@pytest.mark.parametrize("block", [128, 512], ids=["3 blocks, the last half", "1 block"])
def test_block_scaled_is_launch_quantized_bit_for_bit(block, split, dtype):
    # X_MODE 3: the row scales from block amaxes, x quantized in the GEMV by the prologue kernel's division
    w, s, b = _weights(20, 320, bias=True, dtype=dtype)
    x = _x(3, 320, dtype)
    x[1, 300] = -900.0  # row 1's amax in its last block (the outlier channel 7 sets the others')
    cfg = _config(split=split)
    want = fp8_gemv.launch_quantized(*fp8_gemv.quantize_rows(x), w, s, b, dtype, cfg)  # X_MODE 2
    for _ in range(2):  # split: merged in the launch, the tickets left at zero
        out = fp8_gemv.launch_block_scaled(x, _block_amax(x, block), w, s, b, dtype, cfg)
        assert out.shape == (3, 20) and out.dtype == dtype and torch.equal(out, want)
        assert not tickets(torch.device(DEVICE), 1024)[:1024].any()
    assert_fp8_close(out, _ref(x, w, s, b))


def test_fbgemm_channel_scale_leading_dims_and_strided_input():
    w, s, b = _weights(36, 128, bias=True)
    x = _x(6, 200).reshape(2, 3, 200)[..., 10:138]  # a strided view of the activations
    out = torch.ops.autodeploy.triton_fp8_linear(x, w, s[:, None], b)  # fbgemm_fp8 keeps scales [N, 1]
    assert out.shape == (2, 3, 36)
    assert_fp8_close(out, _ref(x.contiguous(), w, s, b))


def test_sqnr_against_the_full_precision_linear():
    # the bar of tests/quantization/test_quant_linear.py: e4m3 weights and activations >= 27 dB
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=g) / 16
    x = torch.randn(4, 256, generator=g)
    x[:, 7] *= 25.0
    p = fp8.quantize(w)
    out = fp8_gemv.launch(x.to(DEVICE), p["weight"].to(DEVICE), p["weight_scale"].to(DEVICE))
    assert sqnr(out.cpu(), F.linear(x, w)) >= 27.0


def test_rows_above_16_take_the_reference(monkeypatch):
    launched = []
    real = fp8_gemv.launch
    monkeypatch.setattr(fp8_gemv, "launch", lambda *a, **kw: launched.append(a[0].shape) or real(*a, **kw))
    w, s, b = _weights(24, 64, bias=True)
    for rows, kernel in [(16, True), (17, False)]:
        launched.clear()
        x = _x(rows, 64)
        out = torch.ops.autodeploy.triton_fp8_linear(x, w, s, b)
        # 17 rows: the reference on the device against the CPU's: the same codes (torch divides exactly on both)
        (assert_fp8_close if kernel else assert_close)(out, _ref(x, w, s, b))
        assert bool(launched) == kernel, rows


def test_fp8_dot_compile_failure_falls_back_to_fp16_products(monkeypatch):
    real = fp8_gemv._fp8_gemv_kernel
    calls = []

    class Shim:  # an fp8 tl.dot this Triton build rejects
        def __getitem__(self, grid):
            def run(*args, FP8_DOT, **meta):
                calls.append(FP8_DOT)
                if FP8_DOT:
                    raise RuntimeError("PassManager::run failed")
                return real[grid](*args, FP8_DOT=FP8_DOT, **meta)
            return run

    monkeypatch.setattr(fp8_gemv, "_fp8_gemv_kernel", Shim())
    monkeypatch.setattr(fp8_gemv, "_FP8_DOT_BROKEN", [])
    w, s, _ = _weights(16, 64)
    x = _x(1, 64)
    assert_fp8_close(fp8_gemv.launch(x, w, s), _ref(x, w, s, None))
    assert_fp8_close(fp8_gemv.launch(x, w, s), _ref(x, w, s, None))
    assert calls == [True, False, False]  # tried once, then fp16 products only
    with pytest.raises(RuntimeError):  # an explicit config asking for fp8 products gets the error
        fp8_gemv.launch(x, w, s, None, True, _config(fp8_dot=True))


def test_unsupported():
    w, s, _ = _weights(16, 128)
    x = _x(2, 128)
    assert fp8_gemv.supports(x, w, s)
    assert not fp8_gemv.supports(_x(17, 128), w, s)  # prefill rows: torch._scaled_mm
    assert not fp8_gemv.supports(x, w, torch.ones(16, 2, device=DEVICE))  # block-wise scales
    assert not fp8_gemv.supports(x, w.float(), s)  # not e4m3
    w96, s96, _ = _weights(16, 96)
    assert not fp8_gemv.supports(_x(2, 96), w96, s96)  # K % 64
    with pytest.raises(NotImplementedError, match="block-wise"):
        fp8_gemv.launch(x, w, torch.ones(16, 2, device=DEVICE))
    # the op takes everything the reference takes: block scales go to it
    blocks = torch.full((1, 2), float(s.max()), device=DEVICE)  # [N/128, K/64]
    assert_close(torch.ops.autodeploy.triton_fp8_linear(x, w, blocks), _ref(x, w, blocks, None))


def test_launch_config_on_an_h100():
    gate_up = fp8_gemv.launch_config(1, 28672, 4096, 132)
    down = fp8_gemv.launch_config(1, 4096, 14336, 132)
    k_proj = fp8_gemv.launch_config(1, 1024, 4096, 132)
    o = fp8_gemv.launch_config(1, 4096, 4096, 132)
    assert (gate_up["bn"], gate_up["bk"], gate_up["split"]) == (64, 256, 1)
    qkv = fp8_gemv.launch_config(1, 6144, 4096, 132)
    # at most half as many 64-row tiles as SMs: K split to ~2 programs per SM, merged in the launch
    assert (down["bn"], down["bk"], down["split"], down["k_per_split"]) == (64, 256, 4, 14 * 256)
    assert (o["split"], o["k_per_split"]) == (4, 4 * 256)
    assert (qkv["bk"], qkv["split"]) == (512, 1)  # 96 tiles: every split lost in the H200 sweep
    assert k_proj["split"] > 1 and k_proj["k_per_split"] % k_proj["bk"] == 0
    assert gate_up["x_prologue"] and down["x_prologue"]  # the prologue won on every 8B weight at M = 1


def test_launch_config_without_the_merged_split(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_FP8_SPLITK", "0")
    fp8_gemv.launch_config.cache_clear()
    try:
        down = fp8_gemv.launch_config(1, 4096, 14336, 132)
        assert (down["bn"], down["bk"], down["split"]) == (64, 512, 1)
    finally:
        fp8_gemv.launch_config.cache_clear()


def test_opcheck_fake():
    # (opcheck's test_schema cannot run on e4m3 inputs: it multiplies them on the CPU)
    w, s, b = _weights(16, 64, bias=True)
    torch.library.opcheck(torch.ops.autodeploy.triton_fp8_linear.default, (_x(3, 64), w, s, b, True),
                          test_utils=("test_faketensor",))


def test_select_backends_offers_it_for_fp8_linears():
    from autodeploy.profiler.candidates import backends_for

    backends = backends_for(reference.default, torch.device("cuda"))
    assert [b.name for b in backends][:2] == ["triton", "torch"]
    w, s, _ = _weights(16, 64)
    assert backends[0].can_run(dict(x=_x(1, 64), weight=w, weight_scale=s, bias=None, quantize_input=True))
    assert not backends[0].can_run(dict(x=_x(64, 64), weight=w, weight_scale=s, bias=None, quantize_input=True))
