"""The export patches the coverage table needed: each one makes its architecture's exported graph
equal eager transformers, and without it export fails or the graph computes something else."""

from __future__ import annotations

import pytest
import torch

import autodeploy
from autodeploy.coverage.tiny_config import tiny_config
from autodeploy.coverage.worker import RUNTIME_SIZES, build_reference
from autodeploy.errors import ExportError
from autodeploy.export import patches
from autodeploy.transforms.pipeline import registry
from tests.helpers.tolerances import assert_close

# patch -> an architecture whose quirk it handles
CASES = {
    "layer_buffers_to_model_device": "codegen",  # rotary sin/cos table indexed, returned on the CPU
    "scalar_tensors_keep_value": "gpt_neo",  # torch.tensor(finfo.min, device=meta) mask fill value
    "list_indices_keep_value": "falcon",  # qkv[..., [-2]] multi-query key / value pick
}


def export_only() -> dict[str, bool]:
    return {f"transforms.{name}.enabled": False for name in registry()}


def logits(arch: str, tmp_path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(graph, eager) logits of the exported graph (no transforms) on one batch, and the patches applied."""
    model = build_reference(tiny_config(arch), tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", **RUNTIME_SIZES, **export_only())
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return rt.forward(ids), model(ids).logits, rt.graph_module.meta["export_patches"]


@pytest.mark.parametrize("patch", sorted(CASES))
def test_patch_makes_export_match_eager(patch, tmp_path):
    actual, expected, applied = logits(CASES[patch], tmp_path)
    assert patch in applied
    assert_close(actual, expected)


@pytest.mark.parametrize("patch", sorted(CASES))
def test_without_the_patch_export_breaks(patch, tmp_path, monkeypatch):
    module = next(m for m in patches.patch_modules() if m.__name__.endswith("." + patch))
    monkeypatch.setattr(module, "applies", lambda model: False)
    try:
        actual, expected, applied = logits(CASES[patch], tmp_path)
    except (ExportError, RuntimeError):
        return  # export, or the first forward of the loaded graph, fails
    assert patch not in applied
    # or the graph runs and computes something else (garbage indices, lost constants)
    assert not torch.allclose(actual, expected, atol=1e-3), "the patch made no difference"
