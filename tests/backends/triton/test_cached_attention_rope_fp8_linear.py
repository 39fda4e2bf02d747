"""autodeploy::triton_cached_attention_rope_fp8_linear (the decode attention writing block amaxes, then fp8_gemv's
GEMV quantizing x as it reads it, X_MODE 3) vs the pair it replaces on the GPU (triton_cached_attention_rope, then
triton_fp8_linear: its quantization kernel and GEMV): bit-identical output and caches, at one and several splits;
a prefill step and weight-only FP8 take the pair; and vs the reference op. Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import cached_attention_rope_fp8_linear as fused
from autodeploy.quantization import fp8
from tests.backends.triton.cases import DEVICE
from tests.backends.triton.paged import make_step
from tests.backends.triton.test_cached_attention_rope import DECODES, tables
from tests.helpers.tolerances import assert_close, assert_fp8_close

OP = torch.ops.autodeploy.triton_cached_attention_rope_fp8_linear
REF = torch.ops.autodeploy.cached_attention_rope_fp8_linear
N_OUT = 48


def _weight(n_in: int, bias: bool):
    p = fp8.quantize(torch.randn(N_OUT, n_in) / n_in**0.5, "per_channel")
    return p["weight"].to(DEVICE), p["weight_scale"].to(DEVICE), (torch.randn(N_OUT).to(DEVICE) if bias else None)


def _pair(step, cos, sin, w, ws, b, quantize_input=True):
    q, k, v, kc, vc, *meta = step.args()
    attn = torch.ops.autodeploy.triton_cached_attention_rope(q, k, v, kc, vc, *meta, cos, sin, False, None, None,
                                                             None, None)
    out = torch.ops.autodeploy.triton_fp8_linear(attn.reshape(attn.shape[0], -1), w, ws, b, quantize_input)
    return out, kc, vc


def _fused(op, step, cos, sin, w, ws, b, quantize_input=True):
    q, k, v, kc, vc, *meta = step.args()
    return op(q, k, v, kc, vc, *meta, cos, sin, False, None, None, None, None, w, ws, b, quantize_input), kc, vc


@pytest.mark.parametrize("chunks", [DECODES, [(1, 0), (1, 3)]], ids=["merged splits", "one split active"])
@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
def test_decode_bit_identical_to_the_pair(chunks, bias):
    step = make_step(chunks, n=8, n_kv=2)  # K = n * d_v = 128: the GEMV takes multiples of 64
    cos, sin = tables(step, 16)
    w, ws, b = _weight(8 * 16, bias)
    assert fused._fused_decode(*step.args()[:5], step.info.seq_lens, cos, sin, None, w, ws, b, True)
    got, kc, vc = _fused(OP, step, cos, sin, w, ws, b)
    want, want_kc, want_vc = _pair(step, cos, sin, w, ws, b)
    assert got.shape == (len(chunks), N_OUT)
    assert torch.equal(got, want) and torch.equal(kc, want_kc) and torch.equal(vc, want_vc)


@pytest.mark.parametrize("quantize_input", [True, False], ids=["prefill", "weight-only"])
def test_other_calls_take_the_pair(quantize_input):
    chunks = [(5, 0), (3, 4)] if quantize_input else DECODES  # a prefill step; or decode with weight-only FP8
    step = make_step(chunks, n=4, n_kv=2)
    cos, sin = tables(step, 16)
    w, ws, b = _weight(4 * 16, False)
    assert not fused._fused_decode(*step.args()[:5], step.info.seq_lens, cos, sin, None, w, ws, b, quantize_input)
    got, kc, _ = _fused(OP, step, cos, sin, w, ws, b, quantize_input)
    want, want_kc, _ = _pair(step, cos, sin, w, ws, b, quantize_input)
    assert torch.equal(got, want) and torch.equal(kc, want_kc)


def test_close_to_the_reference():
    """The reference composes cached_attention_rope and fp8_linear in torch: the same math, other roundings."""
    step = make_step(DECODES, n=4, n_kv=2)
    cos, sin = tables(step, 16)
    w, ws, b = _weight(4 * 16, True)
    got, kc, _ = _fused(OP, step, cos, sin, w, ws, b)
    want, want_kc, _ = _fused(REF, step, cos, sin, w, ws, b)
    assert_fp8_close(got, want)  # tolerances.py: what parts two FP8 paths of one linear
    assert_close(kc, want_kc, torch.float32)


def test_supports_names_what_it_cannot_take():
    step = make_step(DECODES, n=4, n_kv=2)
    cos, sin = tables(step, 16)
    q, k, v, kc, vc = step.args()[:5]
    w, ws, _ = _weight(4 * 16, False)
    assert fused.supports(q, k, v, kc, vc, cos, sin, w, ws)
    assert not fused.supports(q, k, v, kc, vc, cos, sin, w, ws, quantize_input=False)
    wrong = _weight(4 * 16 + 64, False)  # K is not n * d_v
    assert "input channels" in fused.unsupported_reason(q, k, v, kc, vc, cos, sin, wrong[0], wrong[1])
