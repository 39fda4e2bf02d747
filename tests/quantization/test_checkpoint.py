"""Pre-quantized HF checkpoints: GPTQ / AWQ / FP8 layouts, and quantize -> save -> optimize round trips."""

from __future__ import annotations

import json

import pytest
import torch

from autodeploy.errors import UnsupportedModelError
from autodeploy.quantization import hf_formats, int4
from tests.helpers.tiny_models import save_tiny


def _int4_layer(n=16, k=64, g=32):
    p = int4.quantize(torch.randn(n, k), g)
    p["zeros"][0, 0] = 0.0  # GPTQ v1 stores zero - 1: a zero of 0 wraps to 15 and must come back as 0
    p["zeros"][1, 0] = 15.0
    return p


def test_gptq_layout_round_trip():
    p = _int4_layer()
    h = hf_formats.to_gptq(p["qweight"], p["scales"], p["zeros"], 32)
    assert h["qweight"].shape == (64 // 8, 16) and h["qweight"].dtype == torch.int32
    assert h["qzeros"].shape == (2, 2) and h["scales"].shape == (2, 16) and h["g_idx"].tolist()[31:34] == [0, 1, 1]
    # word r of column n holds input rows 8r..8r+7, row 8r + t at bits 4t
    q = int4.unpack(p["qweight"])
    assert (h["qweight"][1, 3] >> 8) & 0xF == q[3, 10]
    back = hf_formats.from_gptq(h["qweight"], h["qzeros"], h["scales"], h["g_idx"], 32, torch.float32)
    for key in p:
        assert torch.equal(back[key], p[key]), key


def test_gptq_act_order_is_refused():
    p = _int4_layer()
    h = hf_formats.to_gptq(p["qweight"], p["scales"], p["zeros"], 32)
    with pytest.raises(ValueError, match="act-order"):
        hf_formats.from_gptq(h["qweight"], h["qzeros"], h["scales"], h["g_idx"].flip(0), 32, torch.float32)


def test_awq_layout_round_trip():
    p = _int4_layer()
    h = hf_formats.to_awq(p["qweight"], p["scales"], p["zeros"])
    assert h["qweight"].shape == (64, 2) and h["qzeros"].shape == (2, 2)
    q = int4.unpack(p["qweight"])
    # nibble i of word c holds output column 8c + (0, 2, 4, 6, 1, 3, 5, 7)[i]
    assert (h["qweight"][5, 1] >> (4 * 4)) & 0xF == q[8 + 1, 5]
    back = hf_formats.from_awq(h["qweight"], h["qzeros"], h["scales"], torch.float32)
    for key in p:
        assert torch.equal(back[key], p[key]), key


CALIB = {"token_ids": torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(7)).tolist()}
CASES = {
    "gptq": {"transforms.quantize_int4_weight_only.enabled": True, "transforms.quantize_int4_weight_only.method": "gptq",
             "transforms.quantize_int4_weight_only.group_size": 32, "transforms.quantize_int4_weight_only.calibration": CALIB},
    "awq": {"transforms.quantize_int4_weight_only.enabled": True, "transforms.quantize_int4_weight_only.method": "awq",
            "transforms.quantize_int4_weight_only.group_size": 64, "transforms.quantize_int4_weight_only.calibration": CALIB},
    "fbgemm_fp8": {"transforms.quantize_fp8.enabled": True},
}
UNCACHED = {"transforms.insert_kv_cache.enabled": False}


@pytest.mark.parametrize("case", list(CASES))
def test_save_then_optimize_gives_the_in_pipeline_outputs(tmp_path, case):
    from autodeploy.api import optimize
    from autodeploy.quantization.checkpoint import save_quantized

    src = save_tiny("llama", tmp_path / "tiny")
    out = save_quantized(str(src), tmp_path / "q", "cpu", CASES[case])
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == ("gptq" if case == "gptq" else case)
    ids = torch.randint(0, 256, (2, 11))
    in_pipeline = optimize(str(src), "cpu", overrides=CASES[case] | UNCACHED).forward(ids)
    rt = optimize(str(out), "cpu", overrides=UNCACHED)
    mapped = next(i for i in rt.report if i.name == "map_quantized_checkpoint")
    assert mapped.matches == 14  # every projection; lm_head stays full precision
    assert mapped.details["gemms"] == 8  # q/k/v and gate/up fused again, as in the pipeline
    assert torch.equal(rt.forward(ids), in_pipeline)


def test_unknown_quant_method_is_refused(tmp_path):
    from autodeploy.api import optimize

    src = save_tiny("llama", tmp_path / "tiny")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="bitsandbytes"):
        optimize(str(src), "cpu")
