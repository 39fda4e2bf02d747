"""quantize_int8_weight_only: linears -> autodeploy::int8_wo_linear; MoE stacks stored in int8; on load."""

from __future__ import annotations

import torch

import autodeploy.ops  # noqa: F401  (registers the quantized ops)
from autodeploy.graph import aten
from autodeploy.models.weights import load_weights, weight_plan
from autodeploy.quantization.metrics import sqnr
from tests.helpers.tiny_models import tiny_model
from tests.helpers.transform_check import check_transform, run_transforms
from tests.quantization.models import DYN, Block, meta_graph, model_state, quant_recipe, sqnr_at_least, x_in
from tests.transforms.test_fuse_gemms import LiveBytes

INT8 = torch.ops.autodeploy.int8_wo_linear.default
DEQ = torch.ops.autodeploy.dequantize_per_channel.default


def test_every_linear():
    gm = check_transform(
        Block(), [x_in()], "quantize_int8_weight_only",
        before={aten.linear: 7, INT8: 0}, after={aten.linear: 0, INT8: 4, aten.split_with_sizes: 2}, matches=7,
        second_inputs=[x_in(4, 2)], dynamic_shapes=DYN, recipe=quant_recipe(quantize_int8_weight_only={}),
        compare=sqnr_at_least(30.0),
    )
    params = dict(gm.named_parameters())
    assert params["down.weight"].dtype == torch.int8 and params["down.weight_scale"].shape == (64,)


def test_include_glob():
    check_transform(
        Block(), [x_in()], "quantize_int8_weight_only",
        before={aten.linear: 7}, after={aten.linear: 4, INT8: 2}, matches=3,  # gate/up as one GEMM, down
        second_inputs=[x_in(1, 1)], dynamic_shapes=DYN,
        recipe=quant_recipe(quantize_int8_weight_only=dict(include=["gate", "up", "down"])), compare=sqnr_at_least(30.0),
    )


def test_load_holds_at_most_one_layer_twice():
    gm = meta_graph("qwen2")
    run_transforms(gm, ["cleanup_export", "quantize_int8_weight_only"], recipe=quant_recipe(quantize_int8_weight_only={}))
    model = tiny_model("qwen2")
    ids, pos = torch.randint(0, 256, (2, 6)), torch.arange(6).expand(2, 6)
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
    meter = LiveBytes()
    state = {n: meter.checkpoint(t) for n, t in model_state(model).items()}  # qwen2 tiny ties no weights
    del model
    start, peak = meter.live, meter.live
    plan = weight_plan(gm)
    produce = plan.produce

    def tracked(name, fetch):
        nonlocal peak
        before = meter.live
        out = produce(name, fetch)
        peak = max(peak, before + meter.product(out))
        return out

    plan.produce = tracked
    load_weights(gm, state, "cpu")
    # one int8 GEMM weight (q/k/v or gate/up fused) is the most that exists beside the fp32 originals
    largest = max(p.numel() for p in gm.parameters() if p.dtype == torch.int8)
    assert peak - start <= largest, f"peak rose by {peak - start} bytes, largest int8 weight {largest}"
    assert meter.live < start * 0.6  # 14 of the 16 projection weights shrank 4x; embeddings and norms stay
    with torch.no_grad():
        assert sqnr(gm(ids, pos), expected) >= 30.0


def test_moe_expert_stacks_and_router():
    gm = meta_graph("qwen3_moe")
    recipe = quant_recipe(quantize_int8_weight_only={}, match_moe={})
    infos = run_transforms(gm, ["cleanup_export", "match_moe", "quantize_int8_weight_only"], recipe=recipe)
    info = infos["quantize_int8_weight_only"]
    assert info.details["expert_stacks"] == 4  # gate_up and down of both layers
    assert info.matches == 4 + 2 * 5  # + q, k, v, o and the router of each layer
    assert info.details["gemms"] == 2 * 3  # q/k/v fused; o; the router (its input is the MoE block's)
    assert sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is DEQ) == 4
    model = tiny_model("qwen3_moe")
    ids, pos = torch.randint(0, 256, (2, 5)), torch.arange(5).expand(2, 5)
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
    load_weights(gm, model_state(model), "cpu")
    with torch.no_grad():
        assert sqnr(gm(ids, pos), expected) >= 30.0
