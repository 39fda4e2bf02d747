"""Triton int4 weight-only GEMM and its decode GEMV (int4_gemv.py) vs autodeploy::int4_wo_linear
(interpreted on CPU, compiled on CUDA)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import int4_gemm, int4_gemv, int4_gemv_fma
from autodeploy.quantization import int4
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.int4_wo_linear


def _weights(n, k, group_size, dtype, bias=False):
    p = int4.quantize(torch.randn(n, k) / k**0.5, group_size)
    out = [p["qweight"].to(DEVICE), p["scales"].to(DEVICE, dtype), p["zeros"].to(DEVICE, dtype)]
    return out + [randn(n, dtype=dtype) if bias else None]


@dtypes
@pytest.mark.parametrize("m", [1, 5, 33])
@pytest.mark.parametrize("group_size", [32, 128])
def test_matches_reference(m, group_size, dtype):
    qw, s, z, b = _weights(48, 256, group_size, dtype, bias=m == 5)
    x = randn(m, 256, dtype=dtype)
    out = torch.ops.autodeploy.triton_int4_wo_linear(x, qw, s, z, b, group_size)
    assert out.shape == (m, 48) and out.dtype == dtype
    assert_close(out, reference(x, qw, s, z, b, group_size))


@dtypes
def test_leading_dims_and_strided_input(dtype):
    qw, s, z, b = _weights(40, 128, 64, dtype, bias=True)
    x = randn(2, 3, 200, dtype=dtype)[..., 10:138]  # a strided view of the activations
    assert_close(int4_gemm.launch(x, qw, s, z, b, 64), reference(x.contiguous(), qw, s, z, b, 64))


@dtypes
@pytest.mark.parametrize("split", [1, 3])
def test_groups_inside_a_tile_and_k_split(split, dtype):
    # K/2 = 96 with 32-wide groups: a 32-column tile is one group only when BK <= 32; BK = 64 mixes groups
    qw, s, z, b = _weights(24, 192, 32, dtype, bias=True)
    x = randn(4, 192, dtype=dtype)
    k_per_split = -(-96 // split // 64) * 64 if split > 1 else 96
    config = dict(bm=16, bn=16, bk=64, split=-(-96 // k_per_split), k_per_split=k_per_split, tile_group=False,
                  num_warps=4, num_stages=2)
    assert_close(int4_gemm.launch(x, qw, s, z, b, 32, config), reference(x, qw, s, z, b, 32))


def _gemv(bn=16, bk=128, split=1, **kw):
    return dict(kind="gemv", bn=bn, bk=bk, split=split, num_warps=4, num_stages=2) | kw


@dtypes
@pytest.mark.parametrize("m", [1, 3, 5, 16])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bn,split", [(16, 1), (32, 3)])
def test_gemv_matches_reference(bn, split, group_size, m, dtype):
    # N = 41: odd, a partial last tile; K/2 = 192 = 6 steps of 32 (g = 32), 3 of 64 (g = 64, 128: K/2 % 128 != 0)
    qw, s, z, b = _weights(41, 384, group_size, dtype, bias=m in (3, 16))
    x = randn(m, 384, dtype=dtype)
    cfg = int4_gemv.normalized(_gemv(bn, 128, split), m, 41, 192, group_size)
    assert cfg["bk"] == min(group_size, 64) and cfg["split"] == split
    out = int4_gemm.launch(x, qw, s, z, b, group_size, _gemv(bn, 128, split))
    assert out.shape == (m, 41) and out.dtype == dtype
    assert_close(out, reference(x, qw, s, z, b, group_size))


@pytest.mark.parametrize("magic", [True, False])
def test_gemv_fp16_codes_from_the_magic_bits(magic):
    # (q | 0x6400) read as fp16 is 1024 + q: the zero point absorbs the 1024, exactly
    qw, s, z, b = _weights(48, 256, 128, torch.float16, bias=True)
    x = randn(3, 256, dtype=torch.float16)
    out = int4_gemm.launch(x, qw, s, z, b, 128, _gemv(magic=magic))
    assert_close(out, reference(x, qw, s, z, b, 128))


def test_decode_rows_take_a_gemv(monkeypatch):
    launched = []
    for mod in (int4_gemv, int4_gemv_fma):
        real = mod.launch
        monkeypatch.setattr(mod, "launch", lambda *a, real=real, mod=mod, **kw: launched.append(mod) or real(*a, **kw))
    qw, s, z, b = _weights(24, 128, 64, torch.float32, bias=True)
    for rows, kernel in [(1, int4_gemv_fma), (4, int4_gemv_fma), (5, int4_gemv), (16, int4_gemv), (17, None)]:
        launched.clear()
        x = randn(rows, 128)
        assert_close(torch.ops.autodeploy.triton_int4_wo_linear(x, qw, s, z, b, 64), reference(x, qw, s, z, b, 64))
        assert launched == ([kernel] if kernel else []), rows
    # K/2 = 24 and g = 16 share only 8: no 16-wide tile inside one group, the GEMM kernel takes it
    qw, s, z, _ = _weights(16, 48, 16, torch.float32)
    x = randn(1, 48)
    assert int4_gemv.unsupported_reason(x, qw, 16) is not None
    assert int4_gemv_fma.unsupported_reason(x, qw, 16) is not None
    launched.clear()
    assert_close(int4_gemm.launch(x, qw, s, z, None, 16), reference(x, qw, s, z, None, 16))
    assert not launched


def test_gemv_launch_config_on_an_h100():
    cfg = {name: int4_gemv.launch_config(1, n, k // 2, 128, 132) for name, n, k in [
        ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
        ("lm_head", 128256, 4096), ("k", 1024, 4096)]}
    assert all(c["bk"] == 128 and c["k_per_split"] % c["bk"] == 0 for c in cfg.values())
    assert cfg["gate_up"]["bn"] == cfg["lm_head"]["bn"] == 64 and cfg["o"]["bn"] == cfg["down"]["bn"] == 16
    assert all(cfg[name]["split"] == 1 for name in ("qkv", "o", "gate_up", "down", "lm_head"))
    assert cfg["k"]["split"] > 1


def test_launch_config_splits_skinny_decode_weights():
    cfg = int4_gemm.launch_config(1, 1024, 2048, 128, sms=132)  # k_proj of an 8B model (K = 4096) on an H100
    assert cfg["split"] > 1 and cfg["tile_group"] and cfg["k_per_split"] % cfg["bk"] == 0
    assert int4_gemm.launch_config(1, 4096, 2048, 128, sms=132)["split"] == 1  # o_proj: 128 tiles of 32
    wide = int4_gemm.launch_config(1024, 14336, 2048, 128, sms=132)  # prefill
    assert wide["split"] == 1


def test_unsupported():
    qw, s, z, _ = _weights(16, 64, 32, torch.float32)
    x = randn(2, 64)
    assert int4_gemm.supports(x, qw, s, z, None, 32)
    assert not int4_gemm.supports(randn(2, 66), qw, s, z, None, 32)  # K mismatch
    assert not int4_gemm.supports(x, qw, s[:, :1], z, None, 32)  # scales of another group size
    assert not int4_gemm.supports(x, qw, s, z, None, 24)
    with pytest.raises(NotImplementedError, match="input channels"):
        int4_gemm.launch(randn(2, 66), qw, s, z, None, 32)


def test_opcheck_fake_and_schema():
    qw, s, z, b = _weights(16, 64, 32, torch.float32, bias=True)
    torch.library.opcheck(torch.ops.autodeploy.triton_int4_wo_linear.default, (randn(3, 64), qw, s, z, b, 32),
                          test_utils=("test_schema", "test_faketensor"))


def test_select_backends_offers_it_for_int4_linears():
    from autodeploy.profiler.candidates import backends_for

    names = [b.name for b in backends_for(reference.default, torch.device("cuda"))]
    assert names[0] == "triton" and "torch" in names
