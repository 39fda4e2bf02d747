"""fuse_gemms: shared-input linears -> one GEMM + split; weights concatenated as they load."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.export import Dim

from autodeploy.graph import aten
from autodeploy.models.weights import load_weights, weight_plan
from tests.helpers.tiny_models import tiny_model
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import check_transform, export_module, run_transforms

H = 32
DYN = ({0: Dim("b", min=1, max=16), 1: Dim("s", min=1, max=64)},)


def _x(b=2, s=5):
    return torch.randn(b, s, H)


class Block(nn.Module):
    """Attention-style q/k/v (with bias, as Qwen2) and an MLP-style gate/up, plus a lone o / down."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(H, 32), nn.Linear(H, 16), nn.Linear(H, 16)
        self.o = nn.Linear(64, H, bias=False)
        self.gate, self.up = nn.Linear(H, 48, bias=False), nn.Linear(H, 48, bias=False)
        self.down = nn.Linear(48, H, bias=False)

    def forward(self, x):
        h = x + self.o(torch.cat([self.q(x), self.k(x).relu(), self.v(x)], dim=-1))
        return h + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def test_qkv_with_bias_and_gate_up():
    gm = check_transform(
        Block(), [_x()], "fuse_gemms",
        before={aten.linear: 7, aten.split_with_sizes: 0},
        after={aten.linear: 4, aten.split_with_sizes: 2},
        matches=2, second_inputs=[_x(3, 7)], dynamic_shapes=DYN,
    )
    names = dict(gm.named_parameters())
    assert names["fused_q_k_v_weight"].shape == (64, H) and names["fused_q_k_v_bias"].shape == (64,)
    assert names["fused_gate_up_weight"].shape == (96, H)
    assert not any(n in names for n in ("q.weight", "k.bias", "gate.weight"))  # parts are not kept


class MixedBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(H, 8)  # with bias: fused only with other biased linears
        self.b, self.c = nn.Linear(H, 8, bias=False), nn.Linear(H, 16, bias=False)

    def forward(self, x):
        return self.a(x).sum(-1) + self.b(x).sum(-1) * self.c(x).mean(-1)


def test_bias_and_no_bias_fuse_separately():
    check_transform(
        MixedBias(), [_x()], "fuse_gemms",
        before={aten.linear: 3}, after={aten.linear: 2, aten.split_with_sizes: 1},
        matches=1, second_inputs=[_x(1, 9)], dynamic_shapes=DYN,
    )


class SharedWeight(nn.Module):
    """q and k read one input, but k's weight is also used elsewhere (as tied embeddings are)."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(H, H, bias=False), nn.Linear(H, H, bias=False)

    def forward(self, x):
        return self.q(x) + self.k(x) + nn.functional.linear(x.relu(), self.k.weight)


def test_weight_read_elsewhere_is_not_fused():
    check_transform(
        SharedWeight(), [_x()], "fuse_gemms",
        before={aten.linear: 3}, after={aten.linear: 3, aten.split_with_sizes: 0},
        matches=0, second_inputs=[_x(3, 2)], dynamic_shapes=DYN,
    )


def test_weights_of_different_dtypes_are_not_fused():
    gm = export_module(Block().eval(), [_x()], DYN)
    # A quantizer or mixed-precision recipe may leave one projection in another dtype.
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target == "k.weight":
            gm.k.weight = nn.Parameter(gm.k.weight.detach().double(), requires_grad=False)
            node.meta["val"] = node.meta["val"].double()
    info = run_transforms(gm, ["fuse_gemms"])["fuse_gemms"]
    assert info.matches == 2 and info.details["linears_fused"] == 4  # q+v and gate+up; k alone
    assert "fused_q_v_weight" in dict(gm.named_parameters())


def _meta_llama_graph(arch: str):
    """Export the arch on the meta device, as `autodeploy.optimize` does."""
    from autodeploy.export import export_model
    from autodeploy.models.factory import build_meta_model
    from autodeploy.models.source import resolve_source
    from autodeploy.recipe import load_recipe

    import tempfile

    from tests.helpers.tiny_models import save_tiny

    with tempfile.TemporaryDirectory() as d:
        save_tiny(arch, d)
        rec = load_recipe("cpu")
        model = build_meta_model(resolve_source(d), rec)
    return export_model(model, max_batch_size=4, max_seq_len=32)


class LiveBytes:
    """Bytes alive among the checkpoint tensors it hands out and the tensors the loader produces.

    Checkpoint tensors are backed by numpy arrays: torch holds the array until the tensor's storage
    dies, so a finalizer on the array sees the moment the memory is released (on every torch).
    """

    def __init__(self):
        self.live = 0
        self.known: set[int] = set()

    def checkpoint(self, t: torch.Tensor) -> torch.Tensor:
        arr = t.detach().numpy().copy()
        out = torch.from_numpy(arr)
        ptr = out.untyped_storage().data_ptr()
        self.known.add(ptr)
        self.live += arr.nbytes
        weakref.finalize(arr, self._freed, arr.nbytes, ptr)
        return out

    def product(self, t: torch.Tensor) -> int:
        """Count a produced tensor once; a checkpoint tensor passed through unchanged adds nothing."""
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.known:
            return 0
        self.known.add(ptr)
        nbytes = t.untyped_storage().nbytes()
        self.live += nbytes
        return nbytes

    def _freed(self, nbytes: int, ptr: int) -> None:
        self.live -= nbytes
        # the allocator may hand this address to a produced tensor next: it must count then
        self.known.discard(ptr)


def test_load_peak_is_at_most_the_largest_fused_weight():
    gm = _meta_llama_graph("qwen2")
    infos = run_transforms(gm, ["cleanup_export", "fuse_gemms"])
    assert infos["fuse_gemms"].matches == 4  # q/k/v and gate/up in both layers
    fused_bytes = [p.numel() * p.element_size() for n, p in gm.named_parameters() if ".fused_" in n]
    assert len(fused_bytes) == 6  # qkv weight + qkv bias + gate_up weight, two layers

    model = tiny_model("qwen2")
    ids, pos = torch.randint(0, 256, (2, 6)), torch.arange(6).expand(2, 6)
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos).logits
    meter = LiveBytes()
    state = {n: meter.checkpoint(t) for n, t in model.state_dict().items()}  # qwen2 tiny ties no weights
    del model  # the state dict now holds the only copy of the checkpoint
    start, peak = meter.live, meter.live
    plan = weight_plan(gm)
    produce = plan.produce

    def tracked(name, fetch):
        nonlocal peak
        before = meter.live  # the parts of a fused weight are still alive while it is built
        out = produce(name, fetch)
        peak = max(peak, before + meter.product(out))
        return out

    plan.produce = tracked
    load_weights(gm, state, "cpu")
    assert 0 < peak - start <= max(fused_bytes), f"peak rose by {peak - start} bytes, largest fused weight {max(fused_bytes)}"
    assert meter.live == start  # after loading every part is gone: nothing is held twice
    with torch.no_grad():
        assert_close_relative(gm(ids, pos), expected)
