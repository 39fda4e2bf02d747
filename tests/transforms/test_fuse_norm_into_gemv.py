"""fuse_norm_into_gemv: fused_add_rmsnorm -> (aten.linear | gated_linear) of its one reader
=>  autodeploy::add_rmsnorm_linear / add_rmsnorm_gated_linear.

A tiny decoder stack (plain norm first, two add + norm sites per layer, a final norm before an
lm_head) checks the match count, the sites left alone on purpose and the numerics vs eager; guard
modules check the graphs left alone; tiny Llama / Gemma / Qwen3 / Phi3 through
`autodeploy.optimize(dir, "cpu")` check whole models vs transformers; a stand-in second backend checks
that backend selection sees both ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import autodeploy
import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.recipe import load_recipe
from autodeploy.transforms.pipeline import Stage, ordered_specs
from tests.helpers.norms import GemmaNorm, LlamaNorm
from tests.helpers.stand_in import faster_stand_ins, stand_in
from tests.helpers.tiny_models import save_tiny, tiny_config, tiny_model
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import check_transform, count, export_module, run_transforms
from tests.quantization.models import quant_recipe, sqnr_at_least

RMSNORM = torch.ops.autodeploy.rmsnorm.default
NORM = torch.ops.autodeploy.fused_add_rmsnorm.default
GATED = torch.ops.autodeploy.gated_linear.default
NORM_LINEAR = torch.ops.autodeploy.add_rmsnorm_linear.default
NORM_GATED = torch.ops.autodeploy.add_rmsnorm_gated_linear.default
LINEAR = aten.linear.default
H, I, V = 64, 96, 80
DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)
FIRST = ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "fuse_add_rmsnorm", "fuse_gemms", "fuse_gated_linear"]
ON = {"transforms.fuse_gated_linear.enabled": True, "transforms.fuse_norm_into_gemv.enabled": True}
RECIPE = load_recipe("cpu", ON)


def _x(b=2, s=5, dtype=torch.float32):
    return (torch.randn(b, s, H).to(dtype),)


class Decoder(nn.Module):
    """`layers` x (norm -> q/k/v -> mix -> o, + residual; norm -> gated MLP, + residual), final norm, lm_head.

    The first norm reads the input (no residual add yet); every later norm follows an add."""

    def __init__(self, layers=2, bias=False, gemma=False, early_read=False):
        super().__init__()
        norm = (lambda: GemmaNorm(H, random_weight=False)) if gemma else (lambda: LlamaNorm(H, random_weight=False))
        self.early_read = early_read
        self.norms = nn.ModuleList(norm() for _ in range(2 * layers + 1))
        with torch.no_grad():  # away from the init's ones / zeros, so a lost weight shows
            for n in self.norms:
                n.weight.normal_(1.0 if not gemma else 0.0, 0.2)
        lin = lambda i, o, b=bias: nn.Linear(i, o, bias=b)  # noqa: E731
        self.q, self.k, self.v = (nn.ModuleList(lin(H, H) for _ in range(layers)) for _ in range(3))
        self.o = nn.ModuleList(lin(H, H, False) for _ in range(layers))
        self.gate, self.up = (nn.ModuleList(lin(H, I) for _ in range(layers)) for _ in range(2))
        self.down = nn.ModuleList(lin(I, H, False) for _ in range(layers))
        self.lm_head = nn.Linear(H, V, bias=False)

    def forward(self, h):  # h [b, s, H]
        extra = 0.0
        for i in range(len(self.o)):
            n = self.norms[2 * i](h)
            if self.early_read:  # the residual read between the norm and its projection
                extra = extra + h.sum(-1, keepdim=True)
            h = h + self.o[i](F.silu(self.q[i](n)) * self.k[i](n) + self.v[i](n))
            n = self.norms[2 * i + 1](h)
            h = h + self.down[i](F.silu(self.gate[i](n)) * self.up[i](n))
        return self.lm_head(self.norms[-1](h)) + extra  # [b, s, V]


def _check(module, matches, before, after, dtype=torch.float32, first=FIRST, recipe=RECIPE, compare=None):
    return check_transform(
        module.to(dtype), _x(dtype=dtype), "fuse_norm_into_gemv", before=before, after=after, matches=matches,
        second_inputs=_x(3, 1, dtype), dynamic_shapes=DYN, dtype=dtype, recipe=recipe, run_first=list(first),
        compare=compare,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_decoder_sites(gemma, bias, dtype):
    module = Decoder(bias=bias, gemma=gemma)
    # 2 layers: 4 add + norm sites (3 feed qkv / gate_up, the last the lm_head) and the first plain norm
    gm = _check(module, 3, dtype=dtype,
                before={RMSNORM: 1, NORM: 4, GATED: 2, LINEAR: 7, NORM_LINEAR: 0, NORM_GATED: 0},
                after={RMSNORM: 1, NORM: 1, GATED: 0, LINEAR: 6, NORM_LINEAR: 1, NORM_GATED: 2})
    for node in nodes_of(gm, [NORM_LINEAR, NORM_GATED]):
        assert node.args[4] is gemma  # add_unit_offset carried over
        assert (node.args[6] is not None) == bias and node.args[5].op == "get_attr"
    assert all(n.args[7] == "silu" for n in nodes_of(gm, NORM_GATED))
    # left alone: the first layer's plain norm (reads the input) and the final norm (lm_head reads it)
    assert nodes_of(gm, RMSNORM)[0].args[0].op == "placeholder"
    final = nodes_of(gm, NORM)[0]
    assert [u.args[1] for u in final.users] == [0]
    unfused = export_module(module.eval(), _x(dtype=dtype), DYN)
    run_transforms(unfused, FIRST, recipe=RECIPE)  # the graph this transform starts from
    with torch.no_grad():  # the references are that graph's norm + projection: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), unfused(*args))


def test_residual_read_before_the_projection():
    # the fused op takes the norm's place, so a reader of the new residual before the qkv still sees it
    gm = _check(Decoder(early_read=True), 3, before={NORM: 4}, after={NORM: 1, NORM_LINEAR: 1, NORM_GATED: 2})
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in nodes_of(gm, [NORM_LINEAR, NORM_GATED]):
        assert all(order[a] < order[node] for a in node.all_input_nodes)


def test_separate_projections_left_alone():
    # without fuse_gemms the normed output feeds q, k, v (and gate, up): no single reader
    module = Decoder()
    first = ["cleanup_export", "match_rmsnorm", "match_gated_mlp", "fuse_add_rmsnorm"]
    canonical = export_module(module.eval(), _x(), DYN)
    run_transforms(canonical, first, recipe=RECIPE)
    gm = _check(module, 0, before={NORM: 4, LINEAR: 15}, after={NORM: 4, NORM_LINEAR: 0, NORM_GATED: 0}, first=first)
    assert gm.code == canonical.code


def test_quantized_projections_left_alone():
    # int8 weight-only: qkv and gate_up are autodeploy.int8_wo_linear (no gated_linear); the lm_head stays
    first = [*FIRST[:3], "quantize_int8_weight_only", *FIRST[3:]]
    recipe = quant_recipe(quantize_int8_weight_only={}, fuse_gated_linear={}, fuse_norm_into_gemv={})
    _check(Decoder(), 0, before={NORM: 4, GATED: 0, LINEAR: 1}, after={NORM: 4, NORM_LINEAR: 0, NORM_GATED: 0},
           first=first, recipe=recipe, compare=sqnr_at_least(30.0))


class Dequantized(nn.Module):
    """A projection whose weight is computed in the graph (an int8 weight times its scales): no parameter."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = LlamaNorm(H, random_weight=False), LlamaNorm(H, random_weight=False)
        self.register_buffer("wq", torch.randint(-127, 128, (H, H), dtype=torch.int8))
        self.register_buffer("scale", torch.rand(H, 1) / 127)
        self.o = nn.Linear(H, H, bias=False)

    def forward(self, h):
        h = h + self.o(self.norm1(h))
        return F.linear(self.norm2(h), self.wq.float() * self.scale)


def test_weight_computed_in_the_graph_left_alone():
    module = Dequantized()
    canonical = export_module(module.eval(), _x(), DYN)
    run_transforms(canonical, FIRST, recipe=RECIPE)
    assert count(canonical, NORM) == 1
    gm = _check(module, 0, before={NORM: 1}, after={NORM: 1, NORM_LINEAR: 0})
    assert gm.code == canonical.code


def test_off_by_default_and_on_in_h100():
    assert not load_recipe("cpu").transform_config("fuse_norm_into_gemv").enabled
    assert load_recipe("h100").transform_config("fuse_norm_into_gemv").enabled


def test_runs_after_the_fusions_it_reads_before_backend_selection():
    fuse = [s.name for s in ordered_specs() if s.stage == Stage.FUSE]
    last_input = max(fuse.index(n) for n in ("fuse_add_rmsnorm", "fuse_gemms", "fuse_gated_linear"))
    assert last_input < fuse.index("fuse_norm_into_gemv") < fuse.index("select_backends")


# ---- backend selection sees the fused ops -------------------------------------------------------
ALT_LINEAR, ALT_GATED = stand_in(NORM_LINEAR), stand_in(NORM_GATED)


def test_faster_backend_replaces_the_fused_ops(monkeypatch, tmp_path):
    # a stand-in for the Triton twins and the unfused pairs, which need CUDA
    with faster_stand_ins(monkeypatch, tmp_path, NORM_LINEAR, NORM_GATED) as (_, calls):
        check_transform(
            Decoder(), _x(), ["fuse_norm_into_gemv", "select_backends"],
            before={NORM_LINEAR: 0, ALT_LINEAR: 0, ALT_GATED: 0},
            after={NORM_LINEAR: 0, NORM_GATED: 0, ALT_LINEAR: 1, ALT_GATED: 2, NORM: 1},
            matches=3 + 3, second_inputs=_x(3, 1), dynamic_shapes=DYN, recipe=RECIPE, run_first=FIRST,
        )  # 3 fusions, 3 swaps (on the CPU the other ops have the reference only)
        assert calls["n"] > 0


# ---- whole tiny models ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen3", "phi3"])
def test_tiny_models(arch, tmp_path):
    save_tiny(arch, tmp_path)
    base = {"transforms.insert_kv_cache.enabled": False, "transforms.fuse_gated_linear.enabled": True}
    unfused = autodeploy.optimize(str(tmp_path), "cpu", **base)
    rt = autodeploy.optimize(str(tmp_path), "cpu", **base, **{"transforms.fuse_norm_into_gemv.enabled": True})
    layers = tiny_config(arch).num_hidden_layers
    sites = 2 * layers - 1  # every add + norm before qkv / gate_up: all but the first input norm
    gm = rt.graph_module
    assert len(nodes_of(gm, NORM_GATED)) == layers and len(nodes_of(gm, NORM_LINEAR)) == layers - 1
    assert len(nodes_of(gm, NORM)) == 1  # the final norm, before the lm_head
    assert {i.name: i for i in rt.report}["fuse_norm_into_gemv"].matches == sites
    reference = tiny_model(arch)  # the seed save_tiny used: the saved weights
    for b, s in ((2, 11), (1, 1)):
        ids = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(b))
        pos = torch.arange(s).expand(b, s)
        with torch.no_grad():
            actual = gm(ids, pos)
            assert_close_relative(actual, reference(input_ids=ids, position_ids=pos).logits)
            assert torch.equal(actual, unfused.graph_module(ids, pos))
