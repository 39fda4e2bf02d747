"""fuse_act_into_fp8_gated_gemv: autodeploy.add_rmsnorm_fp8_linear -> split(F, F) -> autodeploy.gated_act_fp8_linear
=>  autodeploy::add_rmsnorm_fp8_gated_mlp.

The tiny decoder stack of test_fuse_norm_into_gemv.py (after quantize_fp8, fuse_norm_into_gemv and
fuse_act_into_fp8_gemv: each layer's MLP is the two folds around a split; the attention's norm op feeds qkv, no
split: left alone) and a one-MLP module (gelu_tanh, biases, Gemma's norm) check: the match count, the ops before /
after, bit-identical numerics against the graph of the two folds at two shapes, weight-only FP8, graphs left
alone (no FP8, activation read twice, gate read twice), idempotence, backend selection seeing the op, the
recipes, and a tiny Llama whose greedy tokens through the CPU runtime (paged KV cache) are those of the
unfolded FP8 model.
"""

from __future__ import annotations

import operator

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
from tests.helpers.norms import GemmaNorm
from tests.helpers.stand_in import faster_stand_ins, stand_in
from tests.helpers.tiny_models import save_tiny, tiny_config
from tests.helpers.transform_check import check_transform, export_module, run_transforms
from tests.quantization.models import quant_recipe, sqnr_at_least
from tests.transforms.test_fuse_norm_into_gemv import DYN, H, Decoder, _x

ACT = torch.ops.autodeploy.gated_mlp_act.default
ACT_FP8 = torch.ops.autodeploy.gated_act_fp8_linear.default
NORM_FP8 = torch.ops.autodeploy.add_rmsnorm_fp8_linear.default
MLP = torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp.default
FP8 = torch.ops.autodeploy.fp8_linear.default
SPLIT = aten.split_with_sizes.default
FIRST = ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "quantize_fp8", "fuse_add_rmsnorm", "fuse_gemms",
         "fuse_gated_linear", "fuse_norm_into_gemv", "fuse_act_into_fp8_gemv"]
SQNR = sqnr_at_least(25.0)  # e4m3 weights and activations against the fp32 module: ~28 dB (quantization/fp8.py)
NAME = "fuse_act_into_fp8_gated_gemv"


def _recipe(quantize=True, **fp8):
    transforms = dict(fuse_gated_linear={}, fuse_norm_into_gemv={}, fuse_act_into_fp8_gemv={}, **{NAME: {}})
    if quantize:
        transforms["quantize_fp8"] = dict(exclude=["*lm_head"]) | fp8
    return quant_recipe(**transforms)


class NormMlp(nn.Module):
    """r = h + inp(h); r + down(gelu_tanh(gate(n)) * up(n)), n = GemmaNorm(r) (add_unit_offset), biases on every
    projection. read_twice: "act" (the activation also read by a mean) or "gate" (gate(n) also read by a mean)."""

    def __init__(self, read_twice=None, inner=128):
        super().__init__()
        self.read_twice = read_twice
        self.inp = nn.Linear(H, H, bias=True)
        self.norm = GemmaNorm(H, random_weight=False)
        with torch.no_grad():
            self.norm.weight.normal_(0.0, 0.2)
        self.gate, self.up = nn.Linear(H, inner, bias=True), nn.Linear(H, inner, bias=True)
        self.down = nn.Linear(inner, H, bias=True)

    def forward(self, h):  # h [b, s, H]
        r = h + self.inp(h)
        n = self.norm(r)
        g = self.gate(n)  # [b, s, inner]
        a = F.gelu(g, approximate="tanh") * self.up(n)
        out = r + self.down(a)
        if self.read_twice == "act":
            out = out + a.mean(-1, keepdim=True)
        elif self.read_twice == "gate":
            out = out + g.mean(-1, keepdim=True)
        return out


def _check(module, matches, before, after, dtype=torch.float32, recipe=None, compare=SQNR):
    return check_transform(
        module.to(dtype), _x(dtype=dtype), NAME, before=before, after=after, matches=matches,
        second_inputs=_x(3, 1, dtype), dynamic_shapes=DYN, dtype=dtype, recipe=recipe or _recipe(), run_first=FIRST,
        compare=compare,
    )


def _unfolded(module, dtype, recipe):
    gm = export_module(module.eval(), _x(dtype=dtype), DYN)
    run_transforms(gm, FIRST, recipe=recipe)  # the graph of the two folds this transform starts from
    return gm


def _same_as_unfolded(gm, module, dtype=torch.float32, recipe=None):
    unfolded = _unfolded(module, dtype, recipe or _recipe())
    with torch.no_grad():  # the reference is that graph's two ops: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), unfolded(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_sites(dtype):
    module = Decoder()
    # 2 layers: each MLP's norm op + split + act op fold; layer 1's attention norm op feeds qkv (no split): stays
    gm = _check(module, 2, dtype=dtype,
                before={NORM_FP8: 3, ACT_FP8: 2, MLP: 0, SPLIT: 4, ACT: 2},  # + the qkv splits
                after={NORM_FP8: 1, ACT_FP8: 0, MLP: 2, SPLIT: 2, ACT: 2})
    for node in nodes_of(gm, MLP):
        x, res, nw, eps, offset, w, s, b, q, act, wd, sd, bd, qd = node.args
        assert act == "silu" and b is None and bd is None and q is True and qd is True and offset is False
        assert w.op == s.op == wd.op == sd.op == "get_attr"
        assert w.meta["val"].shape == (2 * 96, H) and wd.meta["val"].shape == (H, 96)  # [2F, K], [N, F]
        out, new_res = sorted(node.users, key=lambda u: u.args[1])
        assert out.target is operator.getitem and new_res.args == (node, 1) and new_res.users
        assert out.meta["val"].shape[-1] == H and new_res.meta["val"].shape[-1] == H
    _same_as_unfolded(gm, module, dtype)


def test_gelu_tanh_biases_and_gemma_norm():
    module = NormMlp()
    gm = _check(module, 1, before={NORM_FP8: 1, ACT_FP8: 1}, after={NORM_FP8: 0, ACT_FP8: 0, MLP: 1, FP8: 1})
    (node,) = nodes_of(gm, MLP)
    assert node.args[9] == "gelu_tanh" and node.args[4] is True  # act; Gemma's add_unit_offset
    assert node.args[7].meta["val"].shape == (256,) and node.args[12].meta["val"].shape == (H,)  # both biases
    _same_as_unfolded(gm, module)


def test_weight_only_fp8_folds_too():
    recipe, module = _recipe(activation_scheme="none"), Decoder()
    gm = _check(module, 2, before={ACT_FP8: 2}, after={ACT_FP8: 0, MLP: 2}, recipe=recipe)
    assert all(n.args[8] is False and n.args[13] is False for n in nodes_of(gm, MLP))  # quantize flags carried over
    _same_as_unfolded(gm, module, recipe=recipe)


def test_idempotent():
    module = Decoder()
    gm = _check(module, 2, before={MLP: 0}, after={MLP: 2})
    code = gm.code
    assert run_transforms(gm, [NAME], recipe=_recipe())[NAME].matches == 0  # nothing left to fold
    assert gm.code == code


def test_nothing_folds_without_fp8():
    module = Decoder()
    recipe = _recipe(quantize=False)
    gm = _check(module, 0, before={FP8: 0, NORM_FP8: 0, ACT_FP8: 0}, after={MLP: 0}, recipe=recipe, compare=None)
    assert gm.code == _unfolded(module, torch.float32, recipe).code


@pytest.mark.parametrize("what", ["act", "gate"])
def test_read_twice_left_alone(what):
    # "act": fuse_act_into_fp8_gemv left the activation unfolded (no gated_act_fp8_linear to take);
    # "gate": the split's gate half has a second reader, so the GEMV must still write it
    module = NormMlp(read_twice=what)
    before = {NORM_FP8: 1, ACT_FP8: 0 if what == "act" else 1}
    gm = _check(module, 0, before=before, after={**before, MLP: 0})
    assert gm.code == _unfolded(module, torch.float32, _recipe()).code


def test_named_in_the_gpu_recipes_and_after_the_two_folds():
    assert not load_recipe("cpu").transform_config(NAME).enabled
    for name in ("h100", "h200", "h100-fp8"):  # wherever fuse_act_into_fp8_gemv is on
        recipe = load_recipe(name)
        assert recipe.transform_config(NAME).enabled == recipe.transform_config("fuse_act_into_fp8_gemv").enabled, name
        assert recipe.transform_config(NAME).enabled, name
    order = [s.name for s in ordered_specs()]
    assert (order.index("fuse_norm_into_gemv") < order.index("fuse_act_into_fp8_gemv") < order.index(NAME)
            < order.index("select_backends"))


def test_faster_backend_replaces_the_fused_op(monkeypatch, tmp_path):
    # a stand-in for the Triton twin and the 4-launch candidate, which need CUDA
    alt = stand_in(MLP)
    with faster_stand_ins(monkeypatch, tmp_path, MLP) as (_, calls):
        check_transform(
            Decoder(), _x(), [NAME, "select_backends"],
            before={MLP: 0, alt: 0}, after={MLP: 0, alt: 2},
            matches=2 + 2, second_inputs=_x(3, 1), dynamic_shapes=DYN, recipe=_recipe(), run_first=FIRST,
            compare=SQNR,
        )  # 2 fusions, 2 swaps (on the CPU the other ops have the reference only)
        assert calls["n"] > 0


def test_tiny_llama_greedy_tokens_through_the_runtime(tmp_path):
    d = save_tiny("llama", tmp_path)
    fp8 = {"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.exclude": ["*lm_head"],
           "transforms.fuse_norm_into_gemv.enabled": True, "transforms.fuse_act_into_fp8_gemv.enabled": True}
    unfolded = autodeploy.optimize(str(d), "cpu", overrides=fp8)
    folded = autodeploy.optimize(str(d), "cpu", overrides=fp8 | {f"transforms.{NAME}.enabled": True})
    layers = tiny_config("llama").num_hidden_layers
    report = {i.name: i for i in folded.report}
    assert report[NAME].matches == layers  # every MLP
    assert len(nodes_of(folded.graph_module, MLP)) == layers and not nodes_of(folded.graph_module, ACT_FP8)
    assert not nodes_of(unfolded.graph_module, MLP) and len(nodes_of(unfolded.graph_module, ACT_FP8)) == layers
    prompts = [[5, 17, 33, 2, 9], [100, 3, 7]]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    got = [o.token_ids for o in folded.generate(prompts, params)]
    assert got == [o.token_ids for o in unfolded.generate(prompts, params)]
