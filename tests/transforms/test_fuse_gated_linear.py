"""fuse_gated_linear: linear(gate_up) -> split halves -> gated_mlp_act  =>  autodeploy::gated_linear.

Tiny MLP modules check the matcher (split / chunk / slice spellings, bias, guards that leave the
graph alone); tiny Llama / Gemma / Phi3 through `autodeploy.optimize(dir, "cpu")` with the transform
on check whole decoder stacks; a stand-in second backend checks that backend selection sees the op.
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
from autodeploy.profiler.candidates import backends_for
from autodeploy.recipe import load_recipe
from autodeploy.transforms.pipeline import Stage, ordered_specs
from tests.helpers.stand_in import faster_stand_ins, stand_in
from tests.helpers.tiny_models import save_tiny, tiny_config, tiny_model
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import check_transform, count, export_module, run_transforms

ACT = torch.ops.autodeploy.gated_mlp_act.default
GATED = torch.ops.autodeploy.gated_linear.default
LINEAR = aten.linear.default
SPLIT = aten.split_with_sizes.default
H, I = 32, 48
DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)
ON = load_recipe("cpu", {"transforms.fuse_gated_linear.enabled": True})


def _x(b=2, s=5, dtype=torch.float32):
    return (torch.randn(b, s, H).to(dtype),)


class Mlp(nn.Module):
    """Llama's MLP (separate gate / up, fused by fuse_gemms), `layers` times."""

    def __init__(self, bias=False, act="silu", layers=1):
        super().__init__()
        self.act = act
        self.gate = nn.ModuleList(nn.Linear(H, I, bias=bias) for _ in range(layers))
        self.up = nn.ModuleList(nn.Linear(H, I, bias=bias) for _ in range(layers))
        self.down = nn.ModuleList(nn.Linear(I, H, bias=False) for _ in range(layers))

    def forward(self, x):  # x [b, s, h]
        for gate, up, down in zip(self.gate, self.up, self.down):
            g = gate(x)
            g = F.silu(g) if self.act == "silu" else F.gelu(g, approximate="tanh")
            x = x + down(g * up(x))
        return x


def _check(module, matches, dtype=torch.float32, before=None, after=None, run_first=("match_gated_mlp", "fuse_gemms")):
    return check_transform(
        module.to(dtype), _x(dtype=dtype), "fuse_gated_linear",
        before=before or {ACT: matches, GATED: 0}, after=after or {ACT: 0, GATED: matches},
        matches=matches, second_inputs=_x(3, 1, dtype), dynamic_shapes=DYN, dtype=dtype, recipe=ON,
        run_first=list(run_first),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_fused_gate_up_mlp(act, bias, dtype):
    module = Mlp(bias, act, layers=2)
    gm = _check(module, 2, dtype, before={ACT: 2, SPLIT: 2, LINEAR: 4, GATED: 0},
                after={ACT: 0, SPLIT: 0, LINEAR: 2, GATED: 2})  # the down projections stay
    fused = nodes_of(gm, GATED)
    assert [n.args[3] for n in fused] == [act, act]
    assert all((n.args[2] is not None) == bias for n in fused)
    assert all(n.args[1].op == "get_attr" and n.meta["val"].shape[-1] == I for n in fused)
    unfused = export_module(module.eval(), _x(dtype=dtype), DYN)
    run_transforms(unfused, ["match_gated_mlp", "fuse_gemms"])  # the graph this transform starts from
    with torch.no_grad():  # the reference is that graph's linear + activation: not a bit moves
        for args in (_x(dtype=dtype), _x(4, 3, dtype)):
            assert torch.equal(gm(*args), unfused(*args))


class Phi3Mlp(nn.Module):
    """One gate_up projection whose output is cut in two by chunk or split."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.gate_up = nn.Linear(H, 2 * I, bias=False)
        self.down = nn.Linear(I, H, bias=False)

    def forward(self, x):
        gu = self.gate_up(x)  # [b, s, 2I]
        if self.how == "chunk":
            gate, up = gu.chunk(2, dim=-1)
        else:
            gate, up = gu.split(I, dim=-1)
        return self.down(up * F.silu(gate))


@pytest.mark.parametrize("how", ["chunk", "split"])
def test_phi3_style_halves(how):
    _check(Phi3Mlp(how), 1, run_first=("match_gated_mlp",))


class UpFirst(Phi3Mlp):
    def forward(self, x):  # the gate is the second half: not the op's layout
        up, gate = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Uneven(Phi3Mlp):
    def forward(self, x):  # gate and up are not the two halves
        gate, up, _ = self.gate_up(x).split([I - 16, I - 16, 32], dim=-1)
        return F.silu(gate) * up


class ReadElsewhere(Phi3Mlp):
    def forward(self, x):  # the linear's output is also returned: it must stay
        gu = self.gate_up(x)
        gate, up = gu.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up), gu


class HalfReadElsewhere(Phi3Mlp):
    def forward(self, x):  # the gate half feeds something else too
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up) + gate[..., :H]


@pytest.mark.parametrize("module_cls", [UpFirst, Uneven, ReadElsewhere, HalfReadElsewhere])
def test_graph_left_alone(module_cls):
    module = module_cls("chunk").eval()
    canonical = export_module(module, _x(), DYN)
    run_transforms(canonical, ["match_gated_mlp"])
    assert count(canonical, ACT) == 1  # the activation matched; only the fusion must not happen
    gm = _check(module, 0, run_first=("match_gated_mlp",), before={ACT: 1, GATED: 0}, after={ACT: 1, GATED: 0})
    assert gm.code == canonical.code


def test_off_by_default_and_on_in_gpu_recipes():
    default = load_recipe("cpu").transform_config("fuse_gated_linear")
    assert not default.enabled
    for name in ("h100", "h200", "a100"):
        assert load_recipe(name).transform_config("fuse_gated_linear").enabled, name


def test_runs_after_fuse_gemms_before_backend_selection():
    fuse = [s.name for s in ordered_specs() if s.stage == Stage.FUSE]
    assert fuse.index("fuse_gemms") < fuse.index("fuse_gated_linear") < fuse.index("select_backends")


def test_reference_op_schema_and_fake():
    x, w, b = torch.randn(3, H), torch.randn(2 * I, H), torch.randn(2 * I)
    torch.library.opcheck(GATED, (x, w, b, "gelu_tanh"), test_utils=("test_schema", "test_faketensor"))
    y = F.linear(x, w, b)
    assert torch.equal(GATED(x, w, b, "silu"), F.silu(y[:, :I]) * y[:, I:])
    with pytest.raises(ValueError, match="unknown activation"):
        GATED(x, w, None, "relu")


# ---- backend selection sees the fused op ---------------------------------------------------------
ALT = stand_in(GATED)


def test_faster_backend_replaces_the_fused_op(monkeypatch, tmp_path):
    # a stand-in for the Triton twin, which needs CUDA
    with faster_stand_ins(monkeypatch, tmp_path, GATED) as (_, calls):
        check_transform(
            Mlp(layers=2), _x(), ["fuse_gated_linear", "select_backends"],
            before={ACT: 2, GATED: 0, ALT: 0}, after={ACT: 0, GATED: 0, ALT: 2},
            matches=4, second_inputs=_x(3, 1), dynamic_shapes=DYN, recipe=ON,  # 2 fusions + 2 swaps
            run_first=["match_gated_mlp", "fuse_gemms"],
        )
        assert calls["n"] > 0


def test_triton_twin_is_the_first_candidate_on_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from autodeploy.backends.triton import interpreted

    # the fused GEMV first, then cuBLAS + the Triton act (registered by the Triton backend), then the reference
    (triton, unfused, torch_ref) = backends_for(GATED, torch.device("cuda"))
    assert triton.name == "triton" and triton.op is torch.ops.autodeploy.triton_gated_linear.default
    assert unfused.name == "cublas+triton_act" and unfused.op is torch.ops.autodeploy.cublas_gated_linear.default
    assert torch_ref.name == "torch" and torch_ref.op is GATED
    device = "cpu" if interpreted() else "cuda"  # where the kernels run in this process
    with FakeTensorMode(allow_non_fake_inputs=True):
        x, w = torch.empty(4, 1, 64, device=device), torch.empty(2 * I, 64, device=device)
        prefill = torch.empty(1, 1024, 64, device=device)
        odd = torch.empty(2 * I + 1, 64, device=device)
        x96, w96 = torch.empty(4, 1, 96, device=device), torch.empty(2 * I, 96, device=device)
    call = dict(x=x, weight=w, bias=None, act="silu")
    assert triton.can_run(call) and triton.can_run(call | {"x": prefill})  # prefill: cuBLAS + the Triton act
    assert not triton.can_run(call | {"act": "relu"})
    assert not triton.can_run(call | {"weight": odd})
    assert not triton.can_run(call | {"x": x96, "weight": w96})  # K % 64
    assert backends_for(GATED, torch.device("cpu"))[0].name == "torch"


# ---- whole tiny models ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma", "phi3"])
def test_tiny_models(arch, tmp_path):
    save_tiny(arch, tmp_path)
    no_cache = {"transforms.insert_kv_cache.enabled": False}
    unfused = autodeploy.optimize(str(tmp_path), "cpu", **no_cache)
    rt = autodeploy.optimize(str(tmp_path), "cpu", **no_cache, **{"transforms.fuse_gated_linear.enabled": True})
    layers = tiny_config(arch).num_hidden_layers
    assert len(nodes_of(unfused.graph_module, ACT)) == layers and not nodes_of(unfused.graph_module, GATED)
    assert len(nodes_of(rt.graph_module, GATED)) == layers and not nodes_of(rt.graph_module, ACT)
    assert {i.name: i for i in rt.report}["fuse_gated_linear"].matches == layers
    reference = tiny_model(arch)  # the seed save_tiny used: the saved weights
    for b, s in ((2, 11), (1, 1)):
        ids = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(b))
        pos = torch.arange(s).expand(b, s)
        with torch.no_grad():
            actual = rt.graph_module(ids, pos)
            assert_close_relative(actual, reference(input_ids=ids, position_ids=pos).logits)
            assert torch.equal(actual, unfused.graph_module(ids, pos))
