"""fuse_norm_into_gemv on FP8 graphs: fused_add_rmsnorm -> autodeploy.fp8_linear of its one reader
=>  autodeploy::add_rmsnorm_fp8_linear.

quantize_fp8 (Stage.QUANTIZE) has made q / k / v and gate / up one fp8_linear each, so the tiny decoder
stack of test_fuse_norm_into_gemv.py has the same three foldable sites as in bf16 (the gate_up's split +
gated_mlp_act stay after the fold); the lm_head is left in bf16, as the h100-fp8 recipe does. Checked:
the match count, the ops before / after, bit-identical numerics against the unfused FP8 graph, the
`fp8` switch, weight-only FP8, backend selection seeing the op, the recipes, and a tiny Llama whose
greedy tokens through the CPU runtime (paged KV cache) are those of the unfolded FP8 model.
"""

from __future__ import annotations

import pytest
import torch

import autodeploy
import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.recipe import load_recipe
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.transforms.pipeline import ordered_specs
from tests.helpers.stand_in import faster_stand_ins, stand_in
from tests.helpers.tiny_models import save_tiny, tiny_config
from tests.helpers.transform_check import check_transform, export_module, run_transforms
from tests.quantization.models import quant_recipe, sqnr_at_least
from tests.transforms.test_fuse_norm_into_gemv import DYN, Decoder, _x

RMSNORM = torch.ops.autodeploy.rmsnorm.default
NORM = torch.ops.autodeploy.fused_add_rmsnorm.default
FP8 = torch.ops.autodeploy.fp8_linear.default
NORM_FP8 = torch.ops.autodeploy.add_rmsnorm_fp8_linear.default
NORM_LINEAR = torch.ops.autodeploy.add_rmsnorm_linear.default
ACT = torch.ops.autodeploy.gated_mlp_act.default
LINEAR = aten.linear.default
FIRST = ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "quantize_fp8", "fuse_add_rmsnorm", "fuse_gemms",
         "fuse_gated_linear"]
SQNR = sqnr_at_least(25.0)  # e4m3 weights and activations against the fp32 module: ~28 dB (quantization/fp8.py)


def _recipe(fold=None, **fp8):
    return quant_recipe(quantize_fp8=dict(exclude=["*lm_head"], **fp8), fuse_gated_linear={},
                        fuse_norm_into_gemv=fold or {})


def _check(module, matches, before, after, dtype=torch.float32, recipe=None):
    return check_transform(
        module.to(dtype), _x(dtype=dtype), "fuse_norm_into_gemv", before=before, after=after, matches=matches,
        second_inputs=_x(3, 1, dtype), dynamic_shapes=DYN, dtype=dtype, recipe=recipe or _recipe(), run_first=FIRST,
        compare=SQNR,
    )


def _unfused(module, dtype, recipe):
    gm = export_module(module.eval(), _x(dtype=dtype), DYN)
    run_transforms(gm, FIRST, recipe=recipe)  # the FP8 graph this transform starts from
    return gm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_decoder_sites(gemma, bias, dtype):
    module = Decoder(bias=bias, gemma=gemma)
    # 2 layers: 4 add + norm sites (3 feed the fused qkv / gate_up fp8_linear, the last the bf16 lm_head);
    # the mix silu(q) * k matches gated_mlp_act too: 2 activations per layer
    gm = _check(module, 3, dtype=dtype,
                before={RMSNORM: 1, NORM: 4, FP8: 8, ACT: 4, LINEAR: 1, NORM_FP8: 0},
                after={RMSNORM: 1, NORM: 1, FP8: 5, ACT: 4, LINEAR: 1, NORM_FP8: 3, NORM_LINEAR: 0})
    for node in nodes_of(gm, NORM_FP8):
        assert node.args[4] is gemma  # add_unit_offset carried over
        assert node.args[5].op == node.args[6].op == "get_attr" and node.args[8] is True  # W8, s_w; dynamic x
        assert node.args[5].meta["val"].dtype == torch.float8_e4m3fn and (node.args[7] is not None) == bias
    # qkv and gate_up alike: the output still goes through its split (to the mix / the activation)
    assert sum(any(u.target is aten.split_with_sizes.default for u in gi.users)
               for n in nodes_of(gm, NORM_FP8) for gi in n.users if gi.args[1] == 0) == 3
    unfused = _unfused(module, dtype, _recipe())
    with torch.no_grad():  # the reference is that graph's norm + fp8_linear: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), unfused(*args))


def test_weight_only_fp8_folds_too():
    recipe = _recipe(activation_scheme="none")
    gm = _check(Decoder(), 3, before={NORM: 4, FP8: 8}, after={NORM: 1, FP8: 5, NORM_FP8: 3}, recipe=recipe)
    assert all(n.args[8] is False for n in nodes_of(gm, NORM_FP8))  # quantize_input carried over


def test_fp8_switch_off_leaves_the_graph():
    module = Decoder()
    recipe = _recipe(fold={"fp8": False})
    gm = _check(module, 0, before={NORM: 4, FP8: 8}, after={NORM: 4, FP8: 8, NORM_FP8: 0}, recipe=recipe)
    assert gm.code == _unfused(module, torch.float32, recipe).code


def test_separate_fp8_projections_left_alone():
    # fuse_shared_input off: q / k / v (and gate / up) are separate fp8_linears reading one normed output
    recipe = _recipe(fuse_shared_input=False)
    _check(Decoder(), 0, before={NORM: 4, FP8: 14}, after={NORM: 4, NORM_FP8: 0}, recipe=recipe)


def test_on_in_the_fp8_recipes_and_after_quantization():
    assert load_recipe("h100-fp8").transform_config("fuse_norm_into_gemv").enabled
    assert load_recipe("h100-fp8").transform_config("fuse_norm_into_gemv").fp8
    # benchmarks/quant_gpu.py's fp8 variant: the h100 recipe with quantize_fp8 turned on
    h100_fp8 = load_recipe("h100", {"transforms.quantize_fp8.enabled": True})
    assert h100_fp8.transform_config("fuse_norm_into_gemv").fp8
    order = [s.name for s in ordered_specs()]
    assert order.index("quantize_fp8") < order.index("fuse_norm_into_gemv") < order.index("select_backends")


def test_faster_backend_replaces_the_fused_op(monkeypatch, tmp_path):
    # a stand-in for the Triton twin and the unfused pairs, which need CUDA
    alt = stand_in(NORM_FP8)
    with faster_stand_ins(monkeypatch, tmp_path, NORM_FP8) as (_, calls):
        check_transform(
            Decoder(), _x(), ["fuse_norm_into_gemv", "select_backends"],
            before={NORM_FP8: 0, alt: 0}, after={NORM_FP8: 0, alt: 3, NORM: 1},
            matches=3 + 3, second_inputs=_x(3, 1), dynamic_shapes=DYN, recipe=_recipe(), run_first=FIRST,
            compare=SQNR,
        )  # 3 fusions, 3 swaps (on the CPU the other ops have the reference only)
        assert calls["n"] > 0


def test_tiny_llama_greedy_tokens_through_the_runtime(tmp_path):
    d = save_tiny("llama", tmp_path)
    fp8 = {"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.exclude": ["*lm_head"]}
    unfolded = autodeploy.optimize(str(d), "cpu", overrides=fp8)
    folded = autodeploy.optimize(str(d), "cpu", overrides=fp8 | {"transforms.fuse_norm_into_gemv.enabled": True})
    layers = tiny_config("llama").num_hidden_layers
    report = {i.name: i for i in folded.report}
    assert report["fuse_norm_into_gemv"].matches == 2 * layers - 1  # every add + norm before qkv / gate_up
    assert len(nodes_of(folded.graph_module, NORM_FP8)) == 2 * layers - 1
    assert not nodes_of(unfolded.graph_module, NORM_FP8)
    prompts = [[5, 17, 33, 2, 9], [100, 3, 7]]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    got = [o.token_ids for o in folded.generate(prompts, params)]
    assert got == [o.token_ids for o in unfolded.generate(prompts, params)]
