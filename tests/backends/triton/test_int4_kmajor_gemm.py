"""The K-major int4 tl.dot GEMM (int4_kmajor_gemm.py, > 4 rows) and the op autodeploy::triton_int4_wo_linear_kmajor
vs autodeploy::int4_wo_linear_kmajor (interpreted on CPU: fp32 there, as the other tl.dot kernel tests)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import int4_kmajor_gemm
from autodeploy.quantization import int4, int4_kmajor
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.int4_wo_linear_kmajor
op = torch.ops.autodeploy.triton_int4_wo_linear_kmajor


def _weights(n, k, group_size, dtype, bias=False):
    p = int4.quantize(torch.randn(n, k) / k**0.5, group_size)
    words, s, z = int4_kmajor.from_half_split(p["qweight"], p["scales"], p["zeros"], group_size)
    out = [words.to(DEVICE), s.to(DEVICE, dtype), z.to(DEVICE, dtype)]
    return out + [randn(n, dtype=dtype) if bias else None]


@dtypes
@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_op_matches_reference(group_size, m, dtype):
    # N = 41: odd, a partial last tile; rows 1 and 3 take the GEMV, 16 and 33 this GEMM
    qw, s, z, b = _weights(41, 256, group_size, dtype, bias=m in (3, 16))
    x = randn(m, 256, dtype=dtype)
    out = op(x, qw, s, z, b, group_size)
    assert out.shape == (m, 41) and out.dtype == dtype
    assert_close(out, reference(x, qw, s, z, b, group_size))


@pytest.mark.parametrize("bm,bn,bw", [(16, 16, 2), (16, 32, 4), (32, 16, 16)])
def test_gemm_tiles(bm, bn, bw):
    qw, s, z, b = _weights(40, 256, 64, torch.float32, bias=True)
    x = randn(2, 9, 256)  # leading dims
    cfg = dict(bm=bm, bn=bn, bw=bw, num_warps=4, num_stages=2)
    assert int4_kmajor_gemm.normalized(cfg, 64)["bw"] == min(bw, 8)
    assert_close(int4_kmajor_gemm.launch(x, qw, s, z, b, 64, cfg), reference(x, qw, s, z, b, 64))


def test_strided_input_and_unsupported_calls():
    qw, s, z, b = _weights(40, 128, 32, torch.float32, bias=True)
    x = randn(5, 200)[:, 10:138]  # a strided view of the activations
    assert_close(op(x, qw, s, z, b, 32), reference(x.contiguous(), qw, s, z, b, 32))
    assert int4_kmajor_gemm.supports(x, qw, s, z, b, 32)
    assert not int4_kmajor_gemm.supports(randn(5, 64), qw, s, z, b, 32)  # K mismatch
    assert not int4_kmajor_gemm.supports(x, qw, s.t(), z, b, 32)  # scales not [K/g, N]
    assert not int4_kmajor_gemm.supports(x, qw.view(torch.uint8), s, z, b, 32)
    with pytest.raises(NotImplementedError, match="group size"):
        int4_kmajor_gemm.launch(x, qw, s, z, b, 48)


def test_autotuner_offers_the_kernel():
    from autodeploy.profiler.candidates import backends_for

    names = [bk.name for bk in backends_for(reference.default, torch.device("cuda"))]
    assert names[0] == "triton" and "torch" in names
