"""quantize_fp8: linears -> autodeploy::fp8_linear (e4m3 weights, per-token activations), on load."""

from __future__ import annotations

import torch

import autodeploy.ops  # noqa: F401  (registers the quantized ops)

from autodeploy.graph import aten
from autodeploy.models.weights import load_weights
from autodeploy.quantization.metrics import sqnr
from tests.helpers.tiny_models import tiny_model
from tests.helpers.transform_check import check_transform, run_transforms
from tests.quantization.models import DYN, Block, meta_graph, model_state, quant_recipe, sqnr_at_least, x_in

FP8 = torch.ops.autodeploy.fp8_linear.default
DEQ = torch.ops.autodeploy.dequantize_per_channel.default


def test_every_linear_dynamic_activations():
    gm = check_transform(
        Block(), [x_in()], "quantize_fp8",
        # q/k/v and gate/up read one input each: one FP8 GEMM per group, then a split
        before={aten.linear: 7, FP8: 0}, after={aten.linear: 0, FP8: 4, aten.split_with_sizes: 2}, matches=7,
        second_inputs=[x_in(3, 9)], dynamic_shapes=DYN, recipe=quant_recipe(quantize_fp8={}),
        compare=sqnr_at_least(25.0),  # two e4m3 roundings (weights, activations), ~28 dB; see quantization/fp8.py
    )
    params = dict(gm.named_parameters())
    assert params["fused_q_k_v_weight"].dtype == torch.float8_e4m3fn
    assert params["fused_q_k_v_weight_scale"].shape == (128,) and params["fused_q_k_v_bias"].shape == (128,)
    assert params["o.weight"].dtype == torch.float8_e4m3fn and params["o.weight_scale"].shape == (64,)
    assert not any(n in params for n in ("q.weight", "k.bias", "gate.weight"))


def test_unfused():
    gm = check_transform(
        Block(), [x_in()], "quantize_fp8",
        before={aten.linear: 7, FP8: 0}, after={aten.linear: 0, FP8: 7, aten.split_with_sizes: 0}, matches=7,
        second_inputs=[x_in(3, 9)], dynamic_shapes=DYN, recipe=quant_recipe(quantize_fp8={"fuse_shared_input": False}),
        compare=sqnr_at_least(25.0),
    )
    params = dict(gm.named_parameters())
    assert params["q.weight"].dtype == torch.float8_e4m3fn and params["q.bias"].dtype == torch.float32


def test_weight_only_globs_and_overrides():
    recipe = quant_recipe(quantize_fp8=dict(
        activation_scheme="none", exclude=["down"], overrides={"q": {"skip": True}, "k": {"granularity": "per_tensor"}},
    ))
    gm = check_transform(
        Block(), [x_in()], "quantize_fp8",
        before={aten.linear: 7, FP8: 0}, after={aten.linear: 2, FP8: 4}, matches=5,  # k per tensor: not fused with v
        second_inputs=[x_in(1, 3)], dynamic_shapes=DYN, recipe=recipe, compare=sqnr_at_least(30.0),
    )
    params = dict(gm.named_parameters())
    assert params["k.weight_scale"].shape == () and params["v.weight_scale"].shape == (32,)
    assert params["fused_gate_up_weight_scale"].shape == (256,)
    assert params["q.weight"].dtype == params["down.weight"].dtype == torch.float32


def test_bad_override_names_its_glob():
    import pytest

    from autodeploy.errors import RecipeError

    with pytest.raises(RecipeError, match=r"override 'k'.*granularity"):
        quant_recipe(quantize_fp8=dict(overrides={"k": {"granularity": "per_row"}}))


def test_quantized_on_load_and_composes_with_fuse_gemms():
    gm = meta_graph("llama")
    recipe = quant_recipe(quantize_fp8=dict(exclude=["*lm_head", "*.self_attn.*"]))
    infos = run_transforms(gm, ["cleanup_export", "quantize_fp8", "fuse_gemms"], recipe=recipe)
    assert infos["quantize_fp8"].matches == 6  # gate, up, down in two layers
    # q/k/v stayed plain linears and fuse; the quantized gate/up are left alone by fuse_gemms
    assert infos["fuse_gemms"].matches == 2 and infos["fuse_gemms"].details["linears_fused"] == 6
    assert all(p.is_meta for p in gm.parameters())

    model = tiny_model("llama")
    ids, pos = torch.randint(0, 256, (2, 7)), torch.arange(7).expand(2, 7)
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
    load_weights(gm, model_state(model), "cpu")
    params = dict(gm.named_parameters())
    assert params["model.model.layers.0.mlp.down_proj.weight"].dtype == torch.float8_e4m3fn
    assert params["model.model.layers.0.mlp.fused_gate_proj_up_proj_weight"].shape == (256, 64)
    with torch.no_grad():
        assert sqnr(gm(ids, pos), expected) >= 25.0


def test_moe_expert_stacks_weight_only():
    gm = meta_graph("mixtral")
    recipe = quant_recipe(quantize_fp8=dict(include=["*.experts"]), match_moe={})
    infos = run_transforms(gm, ["cleanup_export", "match_moe", "quantize_fp8"], recipe=recipe)
    assert infos["quantize_fp8"].matches == 4 and infos["quantize_fp8"].details["expert_stacks"] == 4
    assert sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is DEQ) == 4
    model = tiny_model("mixtral")
    ids, pos = torch.randint(0, 256, (1, 6)), torch.arange(6).expand(1, 6)
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
    load_weights(gm, model_state(model), "cpu")
    with torch.no_grad():
        assert sqnr(gm(ids, pos), expected) >= 25.0


def test_gptq_calibrated_at_load_matches_in_place_and_keeps_the_rtn_layout():
    """method gptq: the same e4m3 tensors and ops as rtn, chosen by one calibration pass (in place, or
    when weights load on a meta graph: the two agree); v_proj left to rtn by an override."""
    from torch.export import Dim

    from autodeploy.export.export import LogitsOnly

    g = torch.Generator().manual_seed(1)
    calibration = {"token_ids": torch.randint(0, 256, (4, 32), generator=g).tolist()}
    recipe = quant_recipe(quantize_fp8=dict(method="gptq", activation_scheme="none", calibration=calibration,
                                            fuse_shared_input=False, overrides={"*.v_proj": {"method": "rtn"}}))
    model = tiny_model("llama")
    ids, pos = torch.randint(0, 256, (2, 7)), torch.arange(7).expand(2, 7)
    b, s = Dim("b", min=1, max=8), Dim("s", min=1, max=64)
    in_place = check_transform(
        LogitsOnly(model), [ids, pos], "quantize_fp8",
        before={aten.linear: 15, FP8: 0}, after={aten.linear: 1, FP8: 14}, matches=14,  # lm_head excluded
        second_inputs=[ids[:1, :5], pos[:1, :5]], dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}), recipe=recipe,
        run_first=["cleanup_export", "match_rmsnorm", "match_gated_mlp"], compare=sqnr_at_least(30.0),
    )
    info = next(h for h in reversed(in_place.meta["autodeploy_history"]) if h["name"] == "quantize_fp8")
    assert info["details"]["calibration_tokens"] == [4, 32]
    layers = info["details"]["layers"]
    assert layers["model.layers.0.self_attn.q_proj"] == "fp8_gptq" and layers["model.layers.0.self_attn.v_proj"] == "fp8"
    params = dict(in_place.named_parameters())
    assert params["model.model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert params["model.model.layers.0.self_attn.q_proj.weight_scale"].shape == (64,)

    gm = meta_graph("llama")
    run_transforms(gm, ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "quantize_fp8"], recipe=recipe)
    load_weights(gm, model_state(model), "cpu")
    with torch.no_grad():
        assert sqnr(gm(ids, pos), in_place(ids, pos)) >= 60.0  # same calibration, bit-close
