"""The FMA int4 GEMV (int4_gemv_fma.py) vs autodeploy::int4_wo_linear. It has no tl.dot, so the
interpreter runs it in bf16 and fp16 as well as fp32."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import int4_gemm, int4_gemv_fma
from autodeploy.quantization import int4
from tests.backends.triton.cases import DEVICE, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.int4_wo_linear
all_dtypes = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                                     ids=lambda d: str(d).removeprefix("torch."))


def _weights(n, k, group_size, dtype, bias=False):
    p = int4.quantize(torch.randn(n, k) / k**0.5, group_size)
    out = [p["qweight"].to(DEVICE), p["scales"].to(DEVICE, dtype), p["zeros"].to(DEVICE, dtype)]
    return out + [randn(n, dtype=dtype) if bias else None]


def _fma(bn=16, bk=256, split=1, **kw):
    return dict(kind="gemv_fma", bn=bn, bk=bk, split=split, num_warps=4, num_stages=1) | kw


@all_dtypes
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("x_planes", [True, False])
def test_matches_reference(x_planes, group_size, m, dtype):
    # N = 41: odd, a partial last tile; K/2 = 192: 64-column chunks at g = 128 (K/2 % 128 != 0)
    qw, s, z, b = _weights(41, 384, group_size, dtype, bias=m == 3)
    x = randn(m, 384, dtype=dtype)
    out = int4_gemm.launch(x, qw, s, z, b, group_size, _fma(x_planes=x_planes))
    assert out.shape == (m, 41) and out.dtype == dtype
    assert_close(out, reference(x, qw, s, z, b, group_size))


@pytest.mark.parametrize("bn,bk,split", [(8, 64, 1), (32, 64, 3), (16, 512, 1), (16, 128, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_tiles_and_k_split(bias, bn, bk, split):
    qw, s, z, b = _weights(37, 1024, 64, torch.float32, bias=bias)
    x = randn(2, 1024)
    cfg = int4_gemv_fma.normalized(_fma(bn, bk, split), 37, 512, 64)
    assert cfg["ng"] * cfg["gw"] * 4 == cfg["bk"] and cfg["gw"] * 4 <= 64 and 512 % cfg["bk"] == 0
    assert cfg["split"] == split and cfg["words_per_split"] % (cfg["bk"] // 4) == 0
    assert_close(int4_gemm.launch(x, qw, s, z, b, 64, _fma(bn, bk, split)), reference(x, qw, s, z, b, 64))


def test_x_planes_layout():
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64)  # K = 64: 8 words, steps of 4
    planes = int4_gemv_fma.x_planes(x, 4)  # [M, steps, 8, step]
    assert planes.shape == (2, 2, 8, 4)
    for p in range(8):  # plane p = 2b + h: column h * K/2 + 4i + b
        b, h = divmod(p, 2)
        cols = [h * 32 + 4 * i + b for i in range(8)]
        assert planes[1, :, p].flatten().tolist() == x[1, cols].tolist()


def test_default_configs_on_an_h100():
    cfg = {name: int4_gemv_fma.launch_config(1, n, k // 2, 128, 132) for name, n, k in [
        ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
        ("lm_head", 128256, 4096), ("k", 1024, 4096)]}
    assert all(c["gw"] == 32 and c["x_planes"] for c in cfg.values())  # chunks of one g = 128 group
    assert cfg["gate_up"]["bn"] == cfg["lm_head"]["bn"] == 64 and cfg["qkv"]["bn"] == 16
    assert cfg["o"]["bn"] == cfg["down"]["bn"] == 8
    assert all(cfg[name]["split"] == 1 for name in ("qkv", "o", "gate_up", "down", "lm_head"))
    assert cfg["k"]["split"] > 1


def test_decode_rows_pick_the_kernel(monkeypatch):
    qw, s, z, b = _weights(24, 128, 64, torch.float32, bias=True)
    for rows, kernel in [(1, "gemv_fma"), (4, "gemv_fma"), (5, "gemv"), (16, "gemv"), (17, "gemm")]:
        x = randn(rows, 128)
        assert int4_gemm.kernel_for(x, qw, 64, None) == kernel
        assert int4_gemm.kernel_for(x, qw, 64, None, fma=False) == ("gemv" if kernel == "gemv_fma" else kernel)
    assert int4_gemm.kernel_for(randn(1, 128), qw, 64, _fma()) == "gemv_fma"
    assert int4_gemm.kernel_for(randn(1, 128), qw, 64, dict(bm=16)) == "gemm"
    # a view starting mid-word cannot be read as int32 words: the tl.dot GEMV takes it
    big = torch.zeros(25, 64, dtype=torch.uint8, device=DEVICE)
    assert int4_gemv_fma.unsupported_reason(randn(1, 128), big.view(-1)[2:2 + 24 * 64].view(24, 64), 64)


@pytest.mark.parametrize("m", [1, 3])
def test_dot_op_skips_the_fma_gemv(monkeypatch, m):
    used = []
    real = int4_gemv_fma.launch
    monkeypatch.setattr(int4_gemv_fma, "launch", lambda *a, **kw: used.append(1) or real(*a, **kw))
    qw, s, z, b = _weights(24, 128, 64, torch.float32, bias=True)
    x = randn(m, 128)
    assert_close(torch.ops.autodeploy.triton_int4_wo_linear_dot(x, qw, s, z, b, 64), reference(x, qw, s, z, b, 64))
    assert not used
    assert_close(torch.ops.autodeploy.triton_int4_wo_linear(x, qw, s, z, b, 64), reference(x, qw, s, z, b, 64))
    assert used


def test_autotuner_times_both_triton_kernels():
    from autodeploy.profiler.candidates import backends_for

    names = [b.name for b in backends_for(reference.default, torch.device("cuda"))]
    assert names[:2] == ["triton", "triton-dot"] and "torch" in names
    assert "triton-dot" not in [b.name for b in backends_for(reference.default, torch.device("cuda"), triton=False)]
