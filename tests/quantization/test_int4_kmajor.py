"""The K-major int4 layout (quantization/int4_kmajor.py) and its reference op autodeploy::int4_wo_linear_kmajor."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.quantization import int4, int4_kmajor

canonical = torch.ops.autodeploy.int4_wo_linear
kmajor = torch.ops.autodeploy.int4_wo_linear_kmajor


def _quantized(n, k, group_size, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = int4.quantize((torch.randn(n, k, generator=g) / k**0.5).to(dtype), group_size)
    return p["qweight"], p["scales"], p["zeros"]


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_pack_roundtrip_and_word_order(group_size):
    q = torch.randint(0, 16, (7, 2 * group_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    words = int4_kmajor.pack(q, group_size)
    assert words.shape == (2 * group_size // 8, 7) and words.dtype == torch.int32
    assert torch.equal(int4_kmajor.unpack(words, group_size), q)
    gw = group_size // 8
    for i, n, j in [(0, 0, 0), (gw - 1, 6, 7), (gw + 2, 3, 5), (2 * gw - 1, 1, 7)]:  # nibble 7: the sign bit
        group, r = divmod(i, gw)
        code = (words[i, n].item() >> (4 * j)) & 0xF
        assert code == q[n, group * group_size + j * gw + r].item(), (i, n, j)


@pytest.mark.parametrize("group_size", [32, 128])
def test_repack_from_half_split_is_exact(group_size):
    qw, s, z = _quantized(41, 256, group_size, torch.bfloat16)
    words, s_t, z_t = int4_kmajor.from_half_split(qw, s, z, group_size)
    assert words.shape == (32, 41) and s_t.shape == z_t.shape == (256 // group_size, 41)
    assert s_t.dtype == z_t.dtype == torch.bfloat16 and s_t.is_contiguous()
    assert torch.equal(int4_kmajor.unpack(words, group_size), int4.unpack(qw))
    want = int4.dequantize(qw, s, z, group_size)
    assert torch.equal(int4_kmajor.dequantize(words, s_t, z_t, group_size), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_reference_op_equals_the_canonical_op(group_size, dtype):
    qw, s, z = _quantized(24, 384, group_size, dtype)
    x = torch.randn(2, 3, 384).to(dtype)
    b = torch.randn(24).to(dtype)
    words, s_t, z_t = int4_kmajor.from_half_split(qw, s, z, group_size)
    for bias in (None, b):  # the same dequantized weight and the same GEMM: bit for bit
        assert torch.equal(kmajor(x, words, s_t, z_t, bias, group_size), canonical(x, qw, s, z, bias, group_size))


def test_shape_check():
    assert int4_kmajor.check_shape(8, 256, 128) is None
    assert "multiple of 8" in int4_kmajor.check_shape(8, 256, 12)
    assert int4_kmajor.check_shape(8, 200, 32)  # K not a multiple of the group
