"""quantize_int4_weight_only: linears -> autodeploy::int4_wo_linear (rtn, gptq, awq), on load or at once."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers the quantized ops)
from autodeploy.errors import RecipeError
from autodeploy.export.export import LogitsOnly
from autodeploy.graph import aten
from autodeploy.models.weights import load_weights
from autodeploy.quantization.metrics import sqnr
from tests.helpers.tiny_models import tiny_model
from tests.helpers.transform_check import check_transform, run_transforms
from tests.quantization.models import DYN, Block, meta_graph, model_state, quant_recipe, sqnr_at_least, x_in

INT4 = torch.ops.autodeploy.int4_wo_linear.default
CANONICAL = ["cleanup_export", "match_rmsnorm", "match_gated_mlp"]
B, S = Dim("b", min=1, max=8), Dim("s", min=1, max=64)
TOKEN_DYN = ({0: B, 1: S}, {0: B, 1: S})


def _history(gm, name="quantize_int4_weight_only"):
    return next(h for h in reversed(gm.meta["autodeploy_history"]) if h["name"] == name and not h["skipped"])


def _tokens(b=2, s=9):
    return [torch.randint(0, 256, (b, s)), torch.arange(s).expand(b, s)]


def _calibration(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"token_ids": torch.randint(0, 256, (4, 32), generator=g).tolist()}


def test_rtn_group_sizes_by_override():
    recipe = quant_recipe(quantize_int4_weight_only=dict(group_size=32, overrides={"down": {"group_size": 128}}))
    gm = check_transform(
        Block(), [x_in()], "quantize_int4_weight_only",
        before={aten.linear: 7, INT4: 0}, after={aten.linear: 0, INT4: 4, aten.split_with_sizes: 2}, matches=7,
        second_inputs=[x_in(3, 4)], dynamic_shapes=DYN, recipe=recipe, compare=sqnr_at_least(15.0),
    )
    params = dict(gm.named_parameters())
    assert params["fused_q_k_v_qweight"].shape == (128, 32) and params["fused_q_k_v_qweight"].dtype == torch.uint8
    assert params["fused_q_k_v_scales"].shape == (128, 2) and params["down.scales"].shape == (64, 1)
    assert params["o.qweight"].shape == (64, 64)
    assert "q.weight" not in params and "q.qweight" not in params


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_on_a_tiny_llama(method):
    recipe = quant_recipe(quantize_int4_weight_only=dict(method=method, group_size=32, calibration=_calibration()))
    gm = check_transform(
        LogitsOnly(tiny_model("llama")), _tokens(), "quantize_int4_weight_only",
        # per layer: q/k/v and gate/up fused, o, down; lm_head excluded
        before={aten.linear: 15, INT4: 0}, after={aten.linear: 1, INT4: 8}, matches=14,
        second_inputs=_tokens(1, 5), dynamic_shapes=TOKEN_DYN, recipe=recipe, run_first=CANONICAL,
        compare=sqnr_at_least(15.0),
    )
    info = _history(gm)
    assert info["details"]["calibration_tokens"] == [4, 32]
    # awq folds its input scales into the two RMSNorms of each layer (q/k/v and gate/up)
    assert info["details"]["folded_norms"] == (4 if method == "awq" else 0)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibration_at_load_matches_calibration_in_place(method):
    """Meta graph + calibration when the weights load == a graph holding its weights calibrated at once."""
    recipe = quant_recipe(quantize_int4_weight_only=dict(method=method, group_size=64, calibration=_calibration(2)))
    model = tiny_model("llama")
    ids, pos = _tokens(2, 7)
    in_place = check_transform(
        LogitsOnly(model), [ids, pos], "quantize_int4_weight_only", before={INT4: 0}, after={INT4: 8},
        dynamic_shapes=TOKEN_DYN, recipe=recipe, run_first=CANONICAL, compare=sqnr_at_least(15.0),
    )
    gm = meta_graph("llama")
    run_transforms(gm, CANONICAL + ["quantize_int4_weight_only", "fuse_gemms"], recipe=recipe)
    assert all(p.is_meta for p in gm.parameters())
    load_weights(gm, model_state(model), "cpu")
    with torch.no_grad():
        assert sqnr(gm(ids, pos), in_place(ids, pos)) >= 60.0  # same calibration, bit-close
        assert sqnr(gm(ids, pos), model(input_ids=ids, position_ids=pos).logits) >= 15.0


def test_new_parameters_have_static_shapes():
    """The packed weights, scales and zeros (and fused GEMM weights) carry concrete sizes in their
    fake values: select_backends builds its timing examples from them, and a symbolic size there was
    bound to the token count (the 8B run timed qkv with scales [N, 1] and kept the torch reference)."""
    gm = meta_graph("llama")
    run_transforms(gm, CANONICAL + ["quantize_int4_weight_only", "fuse_gemms"],
                   recipe=quant_recipe(quantize_int4_weight_only=dict(group_size=32)))
    attrs = [n for n in gm.graph.nodes if n.op == "get_attr" and isinstance(n.meta.get("val"), torch.Tensor)]
    assert any(n.target.endswith("scales") for n in attrs)
    for n in attrs:
        assert all(isinstance(d, int) for d in n.meta["val"].shape), (n.target, n.meta["val"].shape)


def test_calibration_text_needs_a_tokenizer():
    gm = meta_graph("llama")
    recipe = quant_recipe(quantize_int4_weight_only=dict(method="gptq"))
    with pytest.raises(RecipeError, match="tokenizer"):
        run_transforms(gm, ["quantize_int4_weight_only"], recipe=recipe)


def test_unsupported_shapes_are_reported_and_left():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(64, 16), torch.nn.Linear(48, 8)

        def forward(self, x):
            return self.a(x).sum(-1) + self.b(x[..., :48]).sum(-1)

    gm = check_transform(
        Odd(), [x_in()], "quantize_int4_weight_only", before={aten.linear: 2}, after={aten.linear: 1, INT4: 1},
        matches=1, dynamic_shapes=DYN, recipe=quant_recipe(quantize_int4_weight_only=dict(group_size=32)),
        compare=sqnr_at_least(15.0),
    )
    info = _history(gm)
    assert "not a multiple of the group size 32" in info["details"]["unsupported"]["b"]


def test_group_size_falls_back_to_one_that_divides_the_input():
    class Wide(torch.nn.Module):  # K = 192 = 1.5 x 128 (SmolLM2: 576 = 4.5 x 128)
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(192, 16), torch.nn.Linear(128, 16)

        def forward(self, x):
            return self.a(x) + self.b(x[..., :128])

    x = lambda b, s: torch.randn(b, s, 192)  # noqa: E731
    gm = check_transform(
        Wide(), [x(2, 3)], "quantize_int4_weight_only", before={aten.linear: 2}, after={aten.linear: 0, INT4: 2},
        matches=2, dynamic_shapes=DYN, second_inputs=[x(1, 5)], compare=sqnr_at_least(15.0),
        recipe=quant_recipe(quantize_int4_weight_only=dict(group_size=128)),
    )
    assert _history(gm)["details"]["layers"] == {"a": "int4_g64", "b": "int4_g128"}
    with pytest.raises(AssertionError, match="expected 2"):  # without the fallback `a` stays a linear
        check_transform(
            Wide(), [x(2, 3)], "quantize_int4_weight_only", before={}, after={INT4: 2}, dynamic_shapes=DYN,
            recipe=quant_recipe(quantize_int4_weight_only=dict(group_size=128, group_size_fallback=False)),
        )
