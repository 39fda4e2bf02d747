"""SmolLM2-135M perplexity on the committed English text (autodeploy/data/ppl_en.txt, 274 tokens),
bf16 runtime on the CPU, each quantized variant against the bf16 figure of the same weights.

The figures are recorded in BENCHMARKS.md (## Quantization). SmolLM2's hidden size (576) is not a
multiple of 128: int4 "g128" quantizes down_proj (K = 1536) in groups of 128 and the other
projections in groups of 64 (group_size_fallback)."""

from __future__ import annotations

import pytest
import torch

import autodeploy
from autodeploy.quantization.calibration import PPL_TEXT, data_text
from autodeploy.quantization.metrics import perplexity

pytestmark = pytest.mark.slow

UNCACHED = {"transforms.insert_kv_cache.enabled": False}
INT4 = "transforms.quantize_int4_weight_only"


def _ppl(overrides: dict) -> float:
    rt = autodeploy.optimize("example:smollm2", "cpu", dtype="bfloat16", overrides=UNCACHED | overrides)
    ids = torch.tensor(rt.tokenizer(data_text(PPL_TEXT))["input_ids"])
    return perplexity(rt.forward, ids)


@pytest.fixture(scope="module")
def bf16() -> float:
    return _ppl({})


def test_bf16_figure(bf16):
    assert 20.0 < bf16 < 30.0  # 24.91 when recorded


def test_int8_weight_only_within_1_percent(bf16):
    assert _ppl({"transforms.quantize_int8_weight_only.enabled": True}) <= bf16 * 1.01  # 24.74 (-0.7%)


def test_fp8(bf16):
    """The issue's +1% is not met on this model: e4m3 keeps 3 mantissa bits (31.6 dB per weight, int8
    41 dB), and SmolLM2-135M loses 3.4% with FP8 weights alone, 5.4% with FP8 activations too."""
    dynamic = _ppl({"transforms.quantize_fp8.enabled": True})
    weight_only = _ppl({"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.activation_scheme": "none"})
    assert bf16 < weight_only < dynamic <= bf16 * 1.06, f"bf16 {bf16:.2f} fp8 {dynamic:.2f} fp8 weights {weight_only:.2f}"


def test_fp8_gptq_weights(bf16):
    """GPTQ onto the same e4m3 grid cuts the weights-only cost to under half of rounding to nearest
    (25.77, +3.4%): 25.22 (+1.2%), and 25.16 (+1.0%) with v_proj rounded to nearest, when recorded."""
    fp8 = {"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.activation_scheme": "none",
           "transforms.quantize_fp8.method": "gptq", "transforms.quantize_fp8.overrides": {"*.v_proj": {"method": "rtn"}}}
    got = _ppl(fp8)
    assert got - bf16 <= 0.5 * (25.77 - 24.91), f"bf16 {bf16:.2f} fp8 gptq weights {got:.2f}"


def test_int4_g128_gptq_within_10_percent_and_awq_beats_rtn(bf16):
    rtn = _ppl({f"{INT4}.enabled": True, f"{INT4}.group_size": 128})
    awq = _ppl({f"{INT4}.enabled": True, f"{INT4}.group_size": 128, f"{INT4}.method": "awq"})
    # GPTQ with v_proj rounded to nearest (as recipes/cpu-int4.yaml): GPTQ on v_proj costs ~20%
    gptq = _ppl({f"{INT4}.enabled": True, f"{INT4}.group_size": 128, f"{INT4}.method": "gptq",
                 f"{INT4}.overrides": {"*.v_proj": {"method": "rtn"}}})
    assert gptq <= bf16 * 1.10, f"bf16 {bf16:.2f} rtn {rtn:.2f} gptq {gptq:.2f} awq {awq:.2f}"
    assert gptq < awq < rtn
