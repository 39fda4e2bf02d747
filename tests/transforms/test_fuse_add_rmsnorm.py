"""fuse_add_rmsnorm: residual add + autodeploy::rmsnorm -> autodeploy::fused_add_rmsnorm.

Tiny modules calling the canonical rmsnorm directly check the matcher (sites, guards, graph left
alone where they fail); tiny Llama / Gemma / Qwen3 through `autodeploy.optimize(dir, "cpu")` check
the decoder layers; a stand-in second backend checks that backend selection sees the fused op.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

import autodeploy
import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.profiler.candidates import backends_for
from autodeploy.transforms.pipeline import Stage, ordered_specs, propagate_shapes
from tests.helpers.stand_in import faster_stand_ins, stand_in
from tests.helpers.tiny_models import save_tiny, tiny_config, tiny_model
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import check_transform, export_module, run_transforms

RMSNORM = torch.ops.autodeploy.rmsnorm.default
FUSED = torch.ops.autodeploy.fused_add_rmsnorm.default
ADD = aten.add.Tensor
H = 64
DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)


def _x(b=2, s=7, dtype=torch.float32):
    return (torch.randn(b, s, H).to(dtype),)


def _weight():
    return nn.Parameter(torch.rand(H) + 0.5)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP stand-ins, then the final norm: HF's decoder layer order."""

    def __init__(self, offset: bool = False):
        super().__init__()
        self.offset = offset
        self.w_in, self.w_post, self.w_final = _weight(), _weight(), _weight()
        self.attn, self.mlp = nn.Linear(H, H, bias=False), nn.Linear(H, H, bias=False)

    def norm(self, x, w):
        return torch.ops.autodeploy.rmsnorm(x, w, 1e-6, self.offset)

    def forward(self, x):  # x [b, s, h]
        h = x + self.attn(self.norm(x, self.w_in))  # residual + attention
        h = h + self.mlp(self.norm(h, self.w_post))  # residual + MLP
        return self.norm(h, self.w_final)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_decoder_layer_adds_fuse(offset, dtype):
    module = DecoderLayer(offset).to(dtype)
    gm = check_transform(
        module, _x(dtype=dtype), "fuse_add_rmsnorm",
        before={ADD: 2, RMSNORM: 3, FUSED: 0},
        after={ADD: 0, RMSNORM: 1, FUSED: 2},  # the first norm reads the layer input: no add to fuse
        matches=2, second_inputs=_x(3, 5, dtype), dynamic_shapes=DYN, dtype=dtype,
    )
    fused = nodes_of(gm, FUSED)
    assert all(n.args[3:] == (1e-6, offset) for n in fused)
    assert [n.args[2].target for n in fused] == ["w_post", "w_final"]
    # shapes stay recorded for later passes: the op's pair and each output's
    for n in fused:
        normed, residual = n.meta["val"]
        assert normed.dtype == residual.dtype == dtype and normed.shape[-1] == residual.shape[-1] == H
    assert all("val" in n.meta for n in gm.graph.nodes if n.op == "call_function")
    propagate_shapes(gm)  # what a later shape-propagating pass runs: the op's fake agrees with the recorded pair
    assert all(n.meta["val"][0].shape == n.args[0].meta["val"].shape for n in fused)
    with torch.no_grad():  # the reference is the unfused pair: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), module(*args))


class TwoNormsOfOneAdd(nn.Module):
    """One add read by two norms (and returned): one fusion, the second norm reads the new residual."""

    def __init__(self):
        super().__init__()
        self.w1, self.w2, self.proj = _weight(), _weight(), nn.Linear(H, H)

    def forward(self, x):
        h = x + self.proj(x)
        return torch.ops.autodeploy.rmsnorm(h, self.w1, 1e-5), torch.ops.autodeploy.rmsnorm(h, self.w2, 1e-5), h


def test_add_read_by_two_norms_fuses_once():
    gm = check_transform(
        TwoNormsOfOneAdd(), _x(), "fuse_add_rmsnorm",
        before={ADD: 1, RMSNORM: 2, FUSED: 0}, after={ADD: 0, RMSNORM: 1, FUSED: 1},
        matches=1, second_inputs=_x(1, 9), dynamic_shapes=DYN,
    )
    (fused,) = nodes_of(gm, FUSED)
    (norm,) = nodes_of(gm, RMSNORM)
    assert norm.args[0].args == (fused, 1)  # getitem 1: the new residual


class Broadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias, self.w = _weight(), _weight()

    def forward(self, x):  # [b, s, h] + [h], then [b, s, h] + [b, 1, h]
        a = torch.ops.autodeploy.rmsnorm(x + self.bias, self.w, 1e-6)
        return torch.ops.autodeploy.rmsnorm(a + a.mean(1, keepdim=True), self.w, 1e-6)


class Promotion(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = _weight()

    def forward(self, x):  # fp32 + bf16: the add promotes, its bf16 input is not the norm input's dtype
        return torch.ops.autodeploy.rmsnorm(x + x.sin().to(torch.bfloat16), self.w, 1e-6)


class Alpha(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = _weight()

    def forward(self, x):  # x + 2 * y is not a residual add
        return torch.ops.autodeploy.rmsnorm(torch.add(x, x.cos(), alpha=2.0), self.w, 1e-6)


class AddAfterNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = _weight()

    def forward(self, x):  # the add reads the norm's output, it does not feed it
        return torch.ops.autodeploy.rmsnorm(x, self.w, 1e-6) + x


@pytest.mark.parametrize("module_cls, adds", [(Broadcast, 2), (Promotion, 1), (Alpha, 1), (AddAfterNorm, 1)],
                         ids=["broadcast", "promotion", "alpha", "add_after_norm"])
def test_graph_left_alone(module_cls, adds):
    module = module_cls().eval()
    before_code = export_module(module, _x(), DYN).code
    gm = check_transform(
        module, _x(), "fuse_add_rmsnorm",
        before={ADD: adds, FUSED: 0}, after={ADD: adds, FUSED: 0},
        matches=0, second_inputs=_x(3, 4), dynamic_shapes=DYN,
    )
    assert gm.code == before_code


def test_runs_before_backend_selection():
    fuse = [s.name for s in ordered_specs() if s.stage == Stage.FUSE]
    assert fuse.index("fuse_add_rmsnorm") < fuse.index("select_backends")


# ---- backend selection sees the fused op ---------------------------------------------------------
ALT = stand_in(FUSED)


def test_faster_backend_replaces_the_fused_op(monkeypatch, tmp_path):
    # a stand-in for the Triton twin, which needs CUDA: the fused op's two outputs pass through
    with faster_stand_ins(monkeypatch, tmp_path, FUSED) as (_, calls):
        check_transform(
            DecoderLayer(), _x(), ["fuse_add_rmsnorm", "select_backends"],
            before={ADD: 2, FUSED: 0, ALT: 0}, after={ADD: 0, FUSED: 0, ALT: 2},
            matches=4, second_inputs=_x(3, 5), dynamic_shapes=DYN,  # 2 fusions + 2 swaps
        )
        assert calls["n"] > 0


def test_triton_twin_is_the_first_candidate_on_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from autodeploy.backends.triton import interpreted

    (triton, torch_ref) = backends_for(FUSED, torch.device("cuda"))
    assert triton.name == "triton" and triton.op is torch.ops.autodeploy.triton_fused_add_rmsnorm.default
    assert torch_ref.name == "torch" and torch_ref.op is FUSED
    device = "cpu" if interpreted() else "cuda"  # where the kernels run in this process
    with FakeTensorMode(allow_non_fake_inputs=True):
        x, w = torch.empty(4, 1, H, device=device), torch.empty(H, device=device)
        other_dtype = torch.empty(4, 1, H, device=device, dtype=torch.bfloat16)
        other_shape = torch.empty(4, 1, 2 * H, device=device)
    call = dict(x=x, residual=x, weight=w, eps=1e-6, add_unit_offset=False)
    assert triton.can_run(call)
    assert not triton.can_run(call | {"residual": other_dtype})
    assert not triton.can_run(call | {"residual": other_shape})
    assert backends_for(FUSED, torch.device("cpu"))[0].name == "torch"


# ---- whole tiny models ---------------------------------------------------------------------------
def _adds_into_norms(gm) -> int:
    return sum(1 for n in nodes_of(gm, RMSNORM) if n.args[0].op == "call_function" and n.args[0].target is ADD)


@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen3"])
def test_tiny_models(arch, tmp_path):
    save_tiny(arch, tmp_path)
    no_cache = {"transforms.insert_kv_cache.enabled": False}
    unfused = autodeploy.optimize(str(tmp_path), "cpu", **no_cache, **{"transforms.fuse_add_rmsnorm.enabled": False})
    rt = autodeploy.optimize(str(tmp_path), "cpu", **no_cache)
    layers = tiny_config(arch).num_hidden_layers
    # after attention and after the MLP of each layer; the last one feeds the final norm
    assert _adds_into_norms(unfused.graph_module) == 2 * layers
    assert _adds_into_norms(rt.graph_module) == 0
    assert len(nodes_of(rt.graph_module, FUSED)) == 2 * layers
    assert {i.name: i for i in rt.report}["fuse_add_rmsnorm"].matches == 2 * layers
    reference = tiny_model(arch)  # the seed save_tiny used: the saved weights
    for b, s in ((2, 11), (1, 5)):
        ids = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(b))
        pos = torch.arange(s).expand(b, s)
        with torch.no_grad():
            actual = rt.graph_module(ids, pos)
            assert_close_relative(actual, reference(input_ids=ids, position_ids=pos).logits)
            assert torch.equal(actual, unfused.graph_module(ids, pos))
