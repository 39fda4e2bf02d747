"""fuse_attention_into_fp8_gemv on tiny models through the whole CPU pipeline (FP8 o projections): each layer's
cached attention and its o projection become one autodeploy::cached_attention_rope_fp8_linear, and the cached
model's logits over a prefill and decode steps equal the unfused pipeline's bit for bit (the reference composes
the two reference ops). A bf16 o projection, or an attention read by anything else, is left alone."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy import api
from autodeploy.graph import nodes_of
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tiny_models import save_tiny

FUSED = torch.ops.autodeploy.cached_attention_rope_fp8_linear.default
ATTENTION = torch.ops.autodeploy.cached_attention_rope.default
FP8 = ["transforms.quantize_fp8.enabled=true", "transforms.quantize_fp8.exclude=[]"]


def build(path, fuse: bool, fp8: bool = True):
    overrides = (FP8 if fp8 else []) + [f"transforms.fuse_attention_into_fp8_gemv.enabled={str(fuse).lower()}"]
    rt = api.optimize(str(path), "cpu", overrides=overrides)
    return rt, next(i for i in rt.report if i.name == "fuse_attention_into_fp8_gemv")


def steps(rt, ids):
    """Logits of a 7-token prefill, then two decode steps of one sequence, on the runtime's cached model."""
    model, page = rt.model, rt.model.page_size
    pages = list(range(max(1, -(-len(ids) // page))))
    out = [model(SequenceInfo.build([(ids[:7], 0, pages)], page))]
    for t in (7, 8):
        out.append(model(SequenceInfo.build([(ids[t:t + 1], t, pages)], page)))
    return torch.cat(out)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_fused_per_layer_and_bit_identical(tmp_path, arch):
    path = save_tiny(arch, tmp_path / arch)
    fused, info = build(path, fuse=True)
    plain, _ = build(path, fuse=False)
    gm = fused.graph_module
    assert info.matches == 2
    assert len(nodes_of(gm, FUSED)) == 2 and not nodes_of(gm, ATTENTION)
    assert len(nodes_of(plain.graph_module, FUSED)) == 0
    ids = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(0)).tolist()
    assert torch.equal(steps(fused, ids), steps(plain, ids))


def test_bf16_o_projection_left_alone(tmp_path):
    path = save_tiny("llama", tmp_path / "llama")
    rt, _ = build(path, fuse=True, fp8=False)
    assert not nodes_of(rt.graph_module, FUSED) and len(nodes_of(rt.graph_module, ATTENTION)) == 2
