"""The K-major int4 GEMV (int4_kmajor_gemv.py) vs autodeploy::int4_wo_linear_kmajor. No tl.dot, so the
interpreter runs it in bf16 and fp16 as well as fp32."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import int4_kmajor_gemm, int4_kmajor_gemv
from autodeploy.quantization import int4, int4_kmajor
from tests.backends.triton.cases import DEVICE, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.int4_wo_linear_kmajor
all_dtypes = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                                     ids=lambda d: str(d).removeprefix("torch."))


def _weights(n, k, group_size, dtype, bias=False):
    p = int4.quantize(torch.randn(n, k) / k**0.5, group_size)
    words, s, z = int4_kmajor.from_half_split(p["qweight"], p["scales"], p["zeros"], group_size)
    out = [words.to(DEVICE), s.to(DEVICE, dtype), z.to(DEVICE, dtype)]
    return out + [randn(n, dtype=dtype) if bias else None]


def _gemv(bn=64, bw=4, split=1, warps=1):
    return dict(kind="gemv", bn=bn, bw=bw, split=split, num_warps=warps, num_stages=1)


@all_dtypes
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_matches_reference(group_size, m, dtype):
    # N = 41: odd, a partial last tile; K = 384: 12 / 6 / 3 groups; split 2 merges in the last program
    qw, s, z, b = _weights(41, 384, group_size, dtype, bias=m == 3)
    x = randn(m, 384, dtype=dtype)
    out = int4_kmajor_gemm.launch(x, qw, s, z, b, group_size, _gemv(bn=32, split=2))
    assert out.shape == (m, 41) and out.dtype == dtype
    assert_close(out, reference(x, qw, s, z, b, group_size))


@pytest.mark.parametrize("bn,bw,split", [(16, 1, 1), (32, 2, 3), (64, 4, 5), (128, 16, 1), (32, 8, 64)])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_tiles_rows_and_k_split(m, bn, bw, split):
    qw, s, z, b = _weights(37, 512, 64, torch.float32, bias=m != 2)
    x = randn(m, 512)
    cfg = int4_kmajor_gemv.normalized(_gemv(bn, bw, split), m, 37, 512, 64)
    assert cfg["bw"] == min(bw, 8) and cfg["split"] * cfg["groups_per_split"] >= 8
    assert cfg["split"] == min(split, 8) if split != 5 else cfg["split"] == 4  # 8 groups: 2 per split
    assert_close(int4_kmajor_gemm.launch(x, qw, s, z, b, 64, _gemv(bn, bw, split)), reference(x, qw, s, z, b, 64))


def test_consecutive_split_launches_reset_the_tickets():
    from autodeploy.backends.triton._common import tickets

    qw, s, z, b = _weights(64, 256, 32, torch.float32, bias=True)
    for _ in range(2):
        x = randn(1, 256)
        assert_close(int4_kmajor_gemm.launch(x, qw, s, z, b, 32, _gemv(bn=16, split=4)), reference(x, qw, s, z, b, 32))
        assert not tickets(torch.device(DEVICE), 4)[:4].any()


def test_default_configs_on_an_h100():
    cfg = {name: int4_kmajor_gemv.launch_config(1, n, k, 128, 132) for name, n, k in [
        ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
        ("lm_head", 128256, 4096)]}
    assert all(c["bn"] == 256 and c["num_warps"] == 2 and c["bw"] == 8 for c in cfg.values())  # 4 columns a thread
    for name, c in cfg.items():  # ~4 programs per SM (>= 2 after rounding to whole groups per split)
        programs = -(-SHAPES[name][0] // c["bn"]) * c["split"]
        assert programs >= 2 * 132, name
    assert [cfg[w]["split"] for w in ("qkv", "o", "gate_up", "down", "lm_head")] == [16, 32, 5, 28, 2]
    assert int4_kmajor_gemv.launch_config(4, 6144, 4096, 128, 132)["bw"] == 4
    # the bf16x2 kernel's one-row programs: ~8 per SM (128 registers each, 8 fit) where the n tiles are fewer
    # than the SMs; the lm_head's 501 tiles keep ~4 (measured faster there)
    packed = [int4_kmajor_gemv.launch_config(1, n, k, 128, 132, bf16x2=True)["split"] for _, (n, k) in SHAPES.items()]
    assert packed == [32, 32, 8, 56, 2]
    assert int4_kmajor_gemv.launch_config(2, 6144, 4096, 128, 132, bf16x2=True)["split"] == 16


SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}


def test_one_step_config_only_for_one_group_splits_when_asked(monkeypatch):
    """AUTODEPLOY_INT4_ONE_STEP=1: the bf16x2 one-row config of a split of one g = 128 group (8B qkv / o) runs
    the group as one step; splits of several groups, two rows and the fp32 kernel keep their config."""
    def configs(m=1, bf16x2=True):
        return {name: int4_kmajor_gemv.launch_config(m, n, k, 128, 132, bf16x2=bf16x2)
                for name, (n, k) in SHAPES.items()}

    assert not any(c.get("one_group") for c in configs().values())  # off by default
    monkeypatch.setenv("AUTODEPLOY_INT4_ONE_STEP", "1")
    int4_kmajor_gemv.launch_config.cache_clear()
    try:
        on = configs()
        assert [name for name, c in on.items() if c.get("one_group")] == ["qkv", "o"]
        assert on["qkv"]["bw"] == on["o"]["bw"] == 16 and on["gate_up"]["bw"] == 8
        assert not any(c.get("one_group") for c in configs(m=2).values())
        assert not any(c.get("one_group") for c in configs(bf16x2=False).values())
    finally:
        int4_kmajor_gemv.launch_config.cache_clear()


def test_rows_pick_the_kernel():
    assert [int4_kmajor_gemm.kernel_for(m, None) for m in (1, 4, 5, 16)] == ["gemv", "gemv", "gemm", "gemm"]
    assert int4_kmajor_gemm.kernel_for(1, dict(bm=16, bn=64, bw=16)) == "gemm"
    assert int4_kmajor_gemm.kernel_for(9, _gemv()) == "gemv"
    assert int4_kmajor_gemv.unsupported_reason(randn(9, 64), torch.zeros(8, 4, dtype=torch.int32), 64)


def test_bf16x2_kernel_only_where_it_can_run():
    """The bf16x2 twin (inline PTX) runs compiled on sm_80+ for bf16 x; interpreted, on a CPU, or for fp16 /
    fp32 x, the fp32 kernel above does (tests/gpu/test_int4_kmajor.py checks the twin)."""
    from autodeploy.backends.triton import int4_kmajor_gemv_bf16x2
    from autodeploy.backends.triton._common import interpreted

    x = randn(1, 384, dtype=torch.bfloat16)
    compiled_gpu = x.is_cuda and not interpreted() and torch.cuda.get_device_capability() >= (8, 0)
    assert int4_kmajor_gemv_bf16x2.usable(x, _gemv()) == compiled_gpu
    assert not int4_kmajor_gemv_bf16x2.usable(x, dict(_gemv(), packed=False))
    assert not int4_kmajor_gemv_bf16x2.usable(x.half(), _gemv())


def test_programs_per_sm_setting(monkeypatch):
    """AUTODEPLOY_INT4_PER_SM sets the one-row bf16x2 K split's programs an SM (8 by default); bad values are
    refused with the setting's name."""
    from autodeploy.backends.triton import int4_kmajor_gemv_bf16x2

    n, k = SHAPES["qkv"]
    assert int4_kmajor_gemv.launch_config(1, n, k, 128, 132, bf16x2=True)["split"] == 32
    for value, split in (("4", 16), ("2", 11)):  # 24 tiles, 4 a SM: 22 splits -> 2 groups each -> 16 splits
        monkeypatch.setenv("AUTODEPLOY_INT4_PER_SM", value)
        int4_kmajor_gemv.launch_config.cache_clear()
        try:
            cfg = int4_kmajor_gemv.launch_config(1, n, k, 128, 132, bf16x2=True)
        finally:
            int4_kmajor_gemv.launch_config.cache_clear()
        assert cfg["split"] == split, value
    for bad in ("0", "9", "x"):
        monkeypatch.setenv("AUTODEPLOY_INT4_PER_SM", bad)
        with pytest.raises(ValueError, match="AUTODEPLOY_INT4_PER_SM"):
            int4_kmajor_gemv_bf16x2.programs_per_sm()
