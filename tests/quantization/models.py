"""Small modules and graphs shared by the quantization tests."""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from torch.export import Dim

from autodeploy.quantization.metrics import sqnr

H = 64
DYN = ({0: Dim("b", min=1, max=16), 1: Dim("s", min=1, max=64)},)


def x_in(b=2, s=5, outliers=True):
    x = torch.randn(b, s, H)
    if outliers:
        x[..., 3] *= 20.0  # post-norm LLM activations carry a few large channels
    return x


class Block(nn.Module):
    """q/k/v with bias (Qwen2-style), o, gate/up, down: seven linears, two shared-input groups."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(H, 64), nn.Linear(H, 32), nn.Linear(H, 32)
        self.o = nn.Linear(128, H, bias=False)
        self.gate, self.up = nn.Linear(H, 128, bias=False), nn.Linear(H, 128, bias=False)
        self.down = nn.Linear(128, H, bias=False)

    def forward(self, x):
        h = x + self.o(torch.cat([self.q(x), self.k(x).relu(), self.v(x)], dim=-1))
        return h + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def sqnr_at_least(db: float):
    def compare(actual, expected):
        got = sqnr(actual, expected)
        assert got >= db, f"SQNR {got:.1f} dB < {db} dB"

    return compare


def quant_recipe(**transforms):
    """The cpu recipe with the given transforms' configs (each enabled)."""
    from autodeploy.recipe import load_recipe

    overrides = {}
    for name, cfg in transforms.items():
        overrides[f"transforms.{name}.enabled"] = True
        for k, v in (cfg or {}).items():
            overrides[f"transforms.{name}.{k}"] = v
    return load_recipe("cpu", overrides)


def meta_graph(arch: str, max_seq_len: int = 32):
    """Export a tiny arch on the meta device, as `autodeploy.optimize` does."""
    from autodeploy.export import export_model
    from autodeploy.models.factory import build_meta_model
    from autodeploy.models.source import resolve_source
    from autodeploy.recipe import load_recipe
    from tests.helpers.tiny_models import save_tiny

    with tempfile.TemporaryDirectory() as d:
        save_tiny(arch, d)
        model = build_meta_model(resolve_source(d), load_recipe("cpu"))
    return export_model(model, max_batch_size=4, max_seq_len=max_seq_len)


def model_state(model) -> dict[str, torch.Tensor]:
    """A checkpoint as materialize_state gives it: every name (tied ones twice), cloned."""
    state = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({n: b.clone() for n, b in model.named_buffers(remove_duplicate=False)})
    return state
