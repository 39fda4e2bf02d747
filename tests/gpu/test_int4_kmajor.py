"""The K-major INT4 kernels on the GPU at Llama-3.1-8B shapes: the GEMV (int4_kmajor_gemv.py, rows 1..4; bf16 x
runs its bf16x2 twin int4_kmajor_gemv_bf16x2.py, which only a GPU can run: inline PTX) and
the tl.dot GEMM (int4_kmajor_gemm.py) against fp32 truths and the reference op, every benchmarked tile,
the repack on the GPU, and split-K launches inside a CUDA graph (tickets reset on every replay).

The small-shape tests of tests/backends/triton/test_int4_kmajor_*.py also run on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import int4_kmajor_gemm, int4_kmajor_gemv, int4_kmajor_gemv_bf16x2  # noqa: E402
from autodeploy.backends.triton._common import tickets  # noqa: E402
from autodeploy.quantization import int4, int4_kmajor  # noqa: E402
from autodeploy.quantization.metrics import sqnr  # noqa: E402
from tests.helpers.decode_shapes import SHAPES_8B as SHAPES  # noqa: E402
from tests.helpers.decode_shapes import activations as _x  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16


def _kmajor(n, k, g=128, dtype=BF16):
    p = int4.quantize(torch.randn(n, k, device="cuda") / k**0.5, g)
    s, z = p["scales"].to(dtype), p["zeros"].to(dtype)
    return (p["qweight"], s, z), int4_kmajor.from_half_split(p["qweight"], s, z, g)


def _truth(x, half_split, g):
    qw, s, z = half_split
    return F.linear(x.float(), int4.dequantize(qw, s, z, g, torch.float32))


@pytest.mark.parametrize("m", [1, 3, 4, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_model_shapes_default_config(shape, m):
    n, k = SHAPES[shape]
    half_split, (words, s_t, z_t) = _kmajor(n, k)
    x = _x(m, k)
    torch.full((16 * m * n,), float("nan"), device="cuda")  # poison the allocator
    got = torch.ops.autodeploy.triton_int4_wo_linear_kmajor(x, words, s_t, z_t, None, 128)
    assert torch.isfinite(got).all() and got.dtype == BF16
    assert sqnr(got, _truth(x, half_split, 128)) >= 40.0
    want = torch.ops.autodeploy.int4_wo_linear(x, *half_split, None, 128)  # bf16 weights, cuBLAS
    assert sqnr(got, want) >= 40.0
    assert_close(got, want)


@pytest.mark.parametrize("m", [1, 4])
def test_every_benchmarked_tile(m):
    from benchmarks.quant_gemv_bench import KMAJ_TILES

    half_split, kmajor = _kmajor(6144, 4096)
    x = _x(m, 4096)
    b = torch.randn(6144, device="cuda").to(BF16)
    truth = _truth(x, half_split, 128) + b.float()
    for bn, bw, warps, factor in KMAJ_TILES:
        split = max(1, round(factor * -(-4 * 132 // -(-6144 // bn))))
        cfg = dict(kind="gemv", bn=bn, bw=bw, split=split, num_warps=warps, num_stages=1)
        assert sqnr(int4_kmajor_gemm.launch(x, *kmajor, b, 128, cfg), truth) >= 40.0, cfg


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("g", [32, 64])
def test_small_groups_and_dtypes(g, dtype):
    half_split, kmajor = _kmajor(2048, 4096, g, dtype)
    for m in (2, 40):
        x = _x(m, 4096, dtype)
        got = int4_kmajor_gemm.launch(x, *kmajor, None, g)
        assert sqnr(got, _truth(x, half_split, g)) >= 40.0
        assert_close(got, torch.ops.autodeploy.int4_wo_linear_kmajor(x, *kmajor, None, g))


def test_prefill_rows_match_the_reference():
    half_split, kmajor = _kmajor(4096, 4096)
    x = _x(300, 4096)
    got = torch.ops.autodeploy.triton_int4_wo_linear_kmajor(x, *kmajor, None, 128)
    assert sqnr(got, _truth(x, half_split, 128)) >= 40.0


def test_repack_on_the_gpu_equals_the_cpu_repack():
    half_split, kmajor = _kmajor(6144, 4096)
    on_cpu = int4_kmajor.from_half_split(*(t.cpu() for t in half_split), 128)
    for a, b in zip(kmajor, on_cpu):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("shape", ["o", "k"])  # split K: the last program of each n tile merges
def test_cuda_graph_capture_and_replay(shape):
    n, k = SHAPES[shape]
    half_split, kmajor = _kmajor(n, k)
    x = _x(1, k)
    b = torch.randn(n, device="cuda").to(BF16)
    op = torch.ops.autodeploy.triton_int4_wo_linear_kmajor
    assert int4_kmajor_gemv.launch_config(1, n, k, 128, torch.cuda.get_device_properties(0).multi_processor_count)["split"] > 1
    op(x, *kmajor, b, 128)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(x, *kmajor, b, 128)
    for _ in range(3):
        x.copy_(_x(1, k))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert sqnr(out, _truth(x, half_split, 128) + b.float()) >= 40.0
        assert not tickets(torch.device("cuda"), 1024)[:1024].any()


def _gemv_config(m, n, k, g, **overrides):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return int4_kmajor_gemv.normalized(dict(int4_kmajor_gemv.launch_config(m, n, k, g, sms), **overrides), m, n, k, g)


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_bf16x2_kernel_against_truth_and_the_fp32_kernel(m, g):
    """bf16 x takes the bf16x2 kernel; its products and 8-long chains are bf16 (~49 dB emulated), the fp32
    kernel's fp32: both against the fp32 truth, and against each other. Bias, split K and every row count."""
    n, k = 4096, 4096
    half_split, kmajor = _kmajor(n, k, g)
    x = _x(m, k)
    b = torch.randn(n, device="cuda").to(BF16)
    packed, fp32 = _gemv_config(m, n, k, g), _gemv_config(m, n, k, g, packed=False)
    assert int4_kmajor_gemv_bf16x2.usable(x, packed) and not int4_kmajor_gemv_bf16x2.usable(x, fp32)
    assert packed["split"] > 1
    truth = _truth(x, half_split, g) + b.float()
    got = int4_kmajor_gemm.launch(x, *kmajor, b, g, packed)
    want = int4_kmajor_gemm.launch(x, *kmajor, b, g, fp32)
    assert torch.isfinite(got).all()
    assert sqnr(got, truth) >= 40.0 and sqnr(want, truth) >= 40.0
    assert sqnr(got, want) >= 40.0
    assert_close(got, want)


@pytest.mark.parametrize("bw", [2, 4, 16])
def test_bf16x2_kernel_every_words_per_step(bw):
    """BW word rows a step = BW / 2 even and BW / 2 odd rows: 2 (one of each) to a whole g = 128 group."""
    half_split, kmajor = _kmajor(1024, 4096)
    x = _x(1, 4096)
    cfg = _gemv_config(1, 1024, 4096, 128, bw=bw)
    assert cfg["bw"] == bw and int4_kmajor_gemv_bf16x2.usable(x, cfg)
    assert sqnr(int4_kmajor_gemm.launch(x, *kmajor, None, 128, cfg), _truth(x, half_split, 128)) >= 40.0


def test_bf16x2_kernel_declines_x_it_cannot_read_as_pairs():
    """x read as bf16 pairs: a row starting off a 4-byte boundary (a view at an odd offset, or an odd row
    stride) and one-word steps go to the fp32 kernel, with the same result."""
    half_split, kmajor = _kmajor(1024, 4096)
    base = _x(3, 4097)
    odd_offset = base[:1, 1:]  # data_ptr 2 bytes past a 4-byte boundary
    odd_stride = base[:, :4096]  # rows 4097 elements apart
    for x in (odd_offset, odd_stride):
        cfg = _gemv_config(x.shape[0], 1024, 4096, 128)
        assert not int4_kmajor_gemv_bf16x2.usable(x, cfg)
        assert sqnr(int4_kmajor_gemm.launch(x, *kmajor, None, 128, cfg), _truth(x, half_split, 128)) >= 40.0
    assert not int4_kmajor_gemv_bf16x2.usable(_x(1, 4096), _gemv_config(1, 1024, 4096, 128, bw=1))


@pytest.mark.parametrize("shape", ["qkv", "down"])  # one group a split, and several
def test_bf16x2_kernel_evict_first_loads_give_the_same_result(shape, monkeypatch):
    """The default weight loads (evict_first in L1 and L2, int4_kmajor_gemv_bf16x2.load_meta) are a cache hint:
    the output is bit-identical to plain loads (AUTODEPLOY_INT4_W_LOAD=none)."""
    n, k = SHAPES[shape]
    _, kmajor = _kmajor(n, k)
    x = _x(1, k)
    assert int4_kmajor_gemv_bf16x2.load_meta() == dict(W_EVICT="evict_first")
    want = int4_kmajor_gemm.launch(x, *kmajor, None, 128, None)
    monkeypatch.setenv("AUTODEPLOY_INT4_W_LOAD", "none")
    assert int4_kmajor_gemv_bf16x2.load_meta() == dict(W_EVICT="")
    got = int4_kmajor_gemm.launch(x, *kmajor, None, 128, None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", ["qkv", "o"])
def test_one_step_config_for_one_group_splits(shape, monkeypatch):
    """8B qkv / o at one row split K into one group a program: AUTODEPLOY_INT4_ONE_STEP=1 runs it as one step
    (every word loaded before the PDL wait, maxnreg 168), against the truth and the two-step config."""
    n, k = SHAPES[shape]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert "one_group" not in int4_kmajor_gemv.launch_config(1, n, k, 128, sms, bf16x2=True)  # off by default
    monkeypatch.setenv("AUTODEPLOY_INT4_ONE_STEP", "1")
    int4_kmajor_gemv.launch_config.cache_clear()
    try:
        cfg = int4_kmajor_gemv.launch_config(1, n, k, 128, sms, bf16x2=True)
        assert cfg["one_group"] and cfg["groups_per_split"] == 1 and cfg["bw"] == 16
        half_split, kmajor = _kmajor(n, k)
        x = _x(1, k)
        b = torch.randn(n, device="cuda").to(BF16)
        truth = _truth(x, half_split, 128) + b.float()
        got = int4_kmajor_gemm.launch(x, *kmajor, b, 128, None)
        two_step = {key: v for key, v in cfg.items() if key != "one_group"} | dict(bw=8)
        want = int4_kmajor_gemm.launch(x, *kmajor, b, 128, two_step)
        assert sqnr(got, truth) >= 40.0 and sqnr(got, want) >= 40.0
        assert_close(got, want)
        graph = torch.cuda.CUDAGraph()  # split K: the tickets reset on every replay
        with torch.cuda.graph(graph):
            out = int4_kmajor_gemm.launch(x, *kmajor, b, 128, None)
        for _ in range(2):
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, got)
    finally:
        int4_kmajor_gemv.launch_config.cache_clear()  # later tests get the default configs again
