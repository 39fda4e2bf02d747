"""repack_int4_kmajor: autodeploy::int4_wo_linear -> autodeploy::int4_wo_linear_kmajor, weights repacked at load.

The reference op of the K-major layout dequantizes to the very weights of the canonical one, so the
repacked graph must give the quantized graph's outputs bit for bit (on CPU: require_triton off)."""

from __future__ import annotations

import copy

import torch

import autodeploy
import autodeploy.ops  # noqa: F401
from autodeploy.graph import aten
from autodeploy.models.weights import load_weights
from autodeploy.runtime.sampling import SamplingParams
from tests.helpers.tiny_models import save_tiny, tiny_model
from tests.helpers.transform_check import check_transform, count, run_transforms
from tests.quantization.models import DYN, Block, meta_graph, model_state, quant_recipe, sqnr_at_least, x_in

INT4 = torch.ops.autodeploy.int4_wo_linear.default
KMAJOR = torch.ops.autodeploy.int4_wo_linear_kmajor.default
CANONICAL = ["cleanup_export", "match_rmsnorm", "match_gated_mlp"]


def _recipe(group_size=32, **repack):
    return quant_recipe(quantize_int4_weight_only=dict(group_size=group_size),
                        repack_int4_kmajor=dict(require_triton=False, **repack))


def test_block_with_real_weights_is_repacked_at_once():
    recipe = _recipe()
    module = Block().eval()
    gm = check_transform(
        module, [x_in()], "repack_int4_kmajor",
        before={INT4: 4, KMAJOR: 0}, after={INT4: 0, KMAJOR: 4, aten.split_with_sizes.default: 2}, matches=4,
        second_inputs=[x_in(3, 4)], dynamic_shapes=DYN, recipe=recipe, run_first=["quantize_int4_weight_only"],
        compare=sqnr_at_least(15.0),  # against the float module; the exact bar is the quantized graph, below
    )
    params = dict(gm.named_parameters())
    assert params["fused_q_k_v_qweight_kmajor"].shape == (8, 128)  # K = 64: 8 words; N = 64 + 32 + 32
    assert params["fused_q_k_v_qweight_kmajor"].dtype == torch.int32
    assert params["fused_q_k_v_scales_kmajor"].shape == (2, 128) and params["down.zeros_kmajor"].shape == (4, 64)
    assert not any(name.endswith(("qweight", "scales", "zeros")) for name in params)
    # the same graph without the repack: identical outputs
    plain = torch.export.export(module, (x_in(),), dynamic_shapes=DYN, strict=False).module()
    run_transforms(plain, ["quantize_int4_weight_only"], recipe=recipe)
    with torch.no_grad():
        for x in (x_in(), x_in(1, 7)):
            assert torch.equal(gm(x), plain(x))


def test_meta_graph_repacks_as_the_weights_load():
    recipe = _recipe()
    model = tiny_model("llama")
    names = CANONICAL + ["quantize_int4_weight_only", "fuse_gemms"]
    plain = meta_graph("llama")
    run_transforms(plain, names, recipe=recipe)
    gm = copy.deepcopy(plain)
    infos = run_transforms(gm, ["repack_int4_kmajor"], recipe=recipe)
    assert infos["repack_int4_kmajor"].matches == 8 and count(gm, INT4) == 0 and count(gm, KMAJOR) == 8
    assert all(p.is_meta for p in gm.parameters())
    attrs = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.endswith("_kmajor")]
    assert len(attrs) == 24 and all(isinstance(d, int) for n in attrs for d in n.meta["val"].shape)
    load_weights(plain, model_state(model), "cpu")
    load_weights(gm, model_state(model), "cpu")
    words = dict(gm.named_parameters())["model.model.layers.0.self_attn.o_proj.qweight_kmajor"]
    assert words.shape == (64 // 8, 64) and words.dtype == torch.int32 and not words.is_meta
    ids = torch.randint(0, 256, (2, 9))
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        assert torch.equal(gm(ids, pos), plain(ids, pos))


def test_needs_triton_on_cuda_by_default():
    gm = meta_graph("llama")
    recipe = quant_recipe(quantize_int4_weight_only=dict(group_size=32), repack_int4_kmajor={})
    infos = run_transforms(gm, CANONICAL + ["quantize_int4_weight_only", "repack_int4_kmajor"], recipe=recipe)
    assert infos["repack_int4_kmajor"].matches == 0 and "device cpu" in infos["repack_int4_kmajor"].warning
    assert count(gm, INT4) == 8 and count(gm, KMAJOR) == 0


def test_shared_parameters_keep_the_canonical_op():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.a(x)

    gm = torch.export.export(Twice().eval(), (x_in(),), dynamic_shapes=DYN, strict=False).module()
    run_transforms(gm, ["quantize_int4_weight_only"], recipe=_recipe())
    node = next(n for n in gm.graph.nodes if n.target == INT4)
    with gm.graph.inserting_after(node):  # a second reader of the same packed weight
        second = gm.graph.call_function(INT4, node.args, node.kwargs)
    node.replace_all_uses_with(second, delete_user_cb=lambda u: u is not second)
    second.meta = dict(node.meta)
    infos = run_transforms(gm, ["repack_int4_kmajor"], recipe=_recipe())
    assert infos["repack_int4_kmajor"].matches == 0 and count(gm, KMAJOR) == 0
    assert "alone" in next(iter(infos["repack_int4_kmajor"].details["kept"].values()))


def test_greedy_tokens_unchanged_through_the_cpu_runtime(tmp_path):
    d = save_tiny("llama", tmp_path / "llama")
    int4 = {"transforms.quantize_int4_weight_only.enabled": True,
            "transforms.quantize_int4_weight_only.group_size": 64}
    repack = {"transforms.repack_int4_kmajor.enabled": True, "transforms.repack_int4_kmajor.require_triton": False}
    plain = autodeploy.optimize(str(d), "cpu", overrides=int4)
    repacked = autodeploy.optimize(str(d), "cpu", overrides=int4 | repack)
    assert next(i for i in repacked.report if i.name == "repack_int4_kmajor").matches == 8
    prompts = [[5, 17, 33, 2, 9], [100, 3, 7]]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    assert [o.token_ids for o in repacked.generate(prompts, params)] == \
        [o.token_ids for o in plain.generate(prompts, params)]


def test_runs_after_sharding_and_before_backend_selection():
    from autodeploy.transforms.pipeline import ordered_specs

    order = [s.name for s in ordered_specs()]
    assert order.index("shard_tensor_parallel") < order.index("repack_int4_kmajor") < order.index("select_backends")
