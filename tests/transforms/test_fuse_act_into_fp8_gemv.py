"""fuse_act_into_fp8_gemv: autodeploy.gated_mlp_act -> autodeploy.fp8_linear of its one reader (the down
projection)  =>  autodeploy::gated_act_fp8_linear.

quantize_fp8 (Stage.QUANTIZE) has made gate / up one fp8_linear and a split, and fuse_norm_into_gemv has
folded the norm before it; the activation between the split and the down fp8_linear is what is folded
here. The tiny decoder stack of test_fuse_norm_into_gemv.py (its attention mix silu(q) * k also matches
gated_mlp_act, but feeds an add: left alone) and a gelu_tanh MLP with a biased down projection check: the
match count, the ops before / after, bit-identical numerics against the unfolded FP8 graph at two shapes,
weight-only FP8, graphs left alone (no FP8, bf16 down, activation read twice), idempotence, backend
selection seeing the op, the recipes, and a tiny Llama whose greedy tokens through the CPU runtime (paged
KV cache) are those of the unfolded FP8 model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
from tests.transforms.test_fuse_norm_into_gemv import DYN, H, Decoder, _x

ACT = torch.ops.autodeploy.gated_mlp_act.default
FP8 = torch.ops.autodeploy.fp8_linear.default
ACT_FP8 = torch.ops.autodeploy.gated_act_fp8_linear.default
NORM_FP8 = torch.ops.autodeploy.add_rmsnorm_fp8_linear.default
NORM_GATED = torch.ops.autodeploy.add_rmsnorm_gated_linear.default
LINEAR = aten.linear.default
FIRST = ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "quantize_fp8", "fuse_add_rmsnorm", "fuse_gemms",
         "fuse_gated_linear", "fuse_norm_into_gemv"]
SQNR = sqnr_at_least(25.0)  # e4m3 weights and activations against the fp32 module: ~28 dB (quantization/fp8.py)
NAME = "fuse_act_into_fp8_gemv"


def _recipe(quantize=True, **fp8):
    transforms = dict(fuse_gated_linear={}, fuse_norm_into_gemv={}, fuse_act_into_fp8_gemv={})
    if quantize:
        transforms["quantize_fp8"] = dict(exclude=["*lm_head"]) | fp8
    return quant_recipe(**transforms)


class GeluMlp(nn.Module):
    """h + down(gelu_tanh(gate(h)) * up(h)) (Gemma's activation), down with a bias; `twice`: the activation
    is also read by a mean, so the down projection is not its only reader."""

    def __init__(self, twice=False, inner=128):
        super().__init__()
        self.twice = twice
        self.gate, self.up = nn.Linear(H, inner, bias=False), nn.Linear(H, inner, bias=False)
        self.down = nn.Linear(inner, H, bias=True)

    def forward(self, h):  # h [b, s, H]
        a = F.gelu(self.gate(h), approximate="tanh") * self.up(h)  # [b, s, inner]
        out = h + self.down(a)
        return out + a.mean(-1, keepdim=True) if self.twice else out


def _check(module, matches, before, after, dtype=torch.float32, recipe=None, compare=SQNR):
    return check_transform(
        module.to(dtype), _x(dtype=dtype), NAME, before=before, after=after, matches=matches,
        second_inputs=_x(3, 1, dtype), dynamic_shapes=DYN, dtype=dtype, recipe=recipe or _recipe(), run_first=FIRST,
        compare=compare,
    )


def _unfolded(module, dtype, recipe):
    gm = export_module(module.eval(), _x(dtype=dtype), DYN)
    run_transforms(gm, FIRST, recipe=recipe)  # the FP8 graph this transform starts from
    return gm


def _same_as_unfolded(gm, module, dtype=torch.float32, recipe=None):
    unfolded = _unfolded(module, dtype, recipe or _recipe())
    with torch.no_grad():  # the reference is that graph's act + fp8_linear: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), unfolded(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_sites(dtype):
    module = Decoder()
    # 2 layers, 2 gated_mlp_act each: the MLP's feeds the down fp8_linear (folded), the attention mix's an add
    gm = _check(module, 2, dtype=dtype,
                before={ACT: 4, FP8: 5, NORM_FP8: 3, ACT_FP8: 0, LINEAR: 1},
                after={ACT: 2, FP8: 3, NORM_FP8: 3, ACT_FP8: 2, LINEAR: 1})
    for node in nodes_of(gm, ACT_FP8):
        gate, up, act, w, s, b, q = node.args
        assert act == "silu" and b is None and q is True
        assert w.op == s.op == "get_attr" and w.meta["val"].dtype == torch.float8_e4m3fn
        assert w.meta["val"].shape == (H, 96)  # [N, F]: the down projection's
        split = gate.args[0]  # gate and up: the halves of the gate_up fp8_linear's split, as they were
        assert gate.args[1] == 0 and up.args == (split, 1) and split.target is aten.split_with_sizes.default
        assert node.meta["val"].shape[-1] == H
    _same_as_unfolded(gm, module, dtype)


def test_gelu_tanh_and_bias():
    module = GeluMlp()
    gm = _check(module, 1, before={ACT: 1, FP8: 2}, after={ACT: 0, FP8: 1, ACT_FP8: 1})
    (node,) = nodes_of(gm, ACT_FP8)
    assert node.args[2] == "gelu_tanh" and node.args[5].op == "get_attr" and node.args[5].meta["val"].shape == (H,)
    _same_as_unfolded(gm, module)


def test_weight_only_fp8_folds_too():
    recipe, module = _recipe(activation_scheme="none"), Decoder()
    gm = _check(module, 2, before={ACT: 4, FP8: 5}, after={ACT: 2, FP8: 3, ACT_FP8: 2}, recipe=recipe)
    assert all(n.args[6] is False for n in nodes_of(gm, ACT_FP8))  # quantize_input carried over
    _same_as_unfolded(gm, module, recipe=recipe)


def test_idempotent():
    module = Decoder()
    gm = _check(module, 2, before={ACT_FP8: 0}, after={ACT_FP8: 2})
    code = gm.code
    assert run_transforms(gm, [NAME], recipe=_recipe())[NAME].matches == 0  # nothing left to fold
    assert gm.code == code


def test_nothing_folds_without_fp8():
    # bf16 (no quantize_fp8): each MLP's gate_up and activation are one gated_linear (with the norm folded in
    # by fuse_norm_into_gemv), then an aten.linear down; the attention mixes' activations feed adds
    module = Decoder()
    recipe = _recipe(quantize=False)
    gm = _check(module, 0, before={FP8: 0, NORM_GATED: 2, ACT: 2}, after={ACT_FP8: 0, NORM_GATED: 2, ACT: 2},
                recipe=recipe, compare=None)
    assert gm.code == _unfolded(module, torch.float32, recipe).code


def test_bf16_down_projection_left_alone():
    # down_proj excluded from FP8 (as a sensitivity plan may keep it): the activation feeds an aten.linear
    recipe = _recipe(exclude=["*lm_head", "*down*"])
    module = Decoder()
    gm = _check(module, 0, before={ACT: 4, FP8: 3, LINEAR: 3}, after={ACT: 4, ACT_FP8: 0}, recipe=recipe)
    assert gm.code == _unfolded(module, torch.float32, recipe).code


def test_activation_read_twice_left_alone():
    module = GeluMlp(twice=True)
    gm = _check(module, 0, before={ACT: 1, FP8: 2}, after={ACT: 1, FP8: 2, ACT_FP8: 0})
    assert gm.code == _unfolded(module, torch.float32, _recipe()).code


def test_named_in_the_gpu_recipes_and_after_quantization():
    # on in the GPU recipes (+1.5% end to end on the H200, the recipes say so), off by default elsewhere
    assert not load_recipe("cpu").transform_config(NAME).enabled
    for name in ("h100", "h200", "h100-fp8"):
        assert load_recipe(name).transform_config(NAME).enabled, name
    order = [s.name for s in ordered_specs()]
    assert (order.index("quantize_fp8") < order.index("fuse_gated_linear") < order.index("fuse_norm_into_gemv")
            < order.index(NAME) < order.index("select_backends"))


def test_faster_backend_replaces_the_fused_op(monkeypatch, tmp_path):
    # a stand-in for the Triton twin and the unfused pairs, which need CUDA
    alt = stand_in(ACT_FP8)
    with faster_stand_ins(monkeypatch, tmp_path, ACT_FP8) as (_, calls):
        check_transform(
            Decoder(), _x(), [NAME, "select_backends"],
            before={ACT_FP8: 0, alt: 0}, after={ACT_FP8: 0, alt: 2, ACT: 2},
            matches=2 + 2, second_inputs=_x(3, 1), dynamic_shapes=DYN, recipe=_recipe(), run_first=FIRST,
            compare=SQNR,
        )  # 2 fusions, 2 swaps (on the CPU the other ops have the reference only)
        assert calls["n"] > 0


def test_tiny_llama_greedy_tokens_through_the_runtime(tmp_path):
    d = save_tiny("llama", tmp_path)
    fp8 = {"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.exclude": ["*lm_head"],
           "transforms.fuse_norm_into_gemv.enabled": True}
    unfolded = autodeploy.optimize(str(d), "cpu", overrides=fp8)
    folded = autodeploy.optimize(str(d), "cpu", overrides=fp8 | {f"transforms.{NAME}.enabled": True})
    layers = tiny_config("llama").num_hidden_layers
    report = {i.name: i for i in folded.report}
    assert report[NAME].matches == layers  # every MLP's activation before its down projection
    assert len(nodes_of(folded.graph_module, ACT_FP8)) == layers and not nodes_of(folded.graph_module, ACT)
    assert not nodes_of(unfolded.graph_module, ACT_FP8)
    prompts = [[5, 17, 33, 2, 9], [100, 3, 7]]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    got = [o.token_ids for o in folded.generate(prompts, params)]
    assert got == [o.token_ids for o in unfolded.generate(prompts, params)]
