"""Every tiny architecture after canonicalization: one attention op per layer, rope / rmsnorm / gated
MLP ops where the model has them, no HF attention left, and logits equal to eager (fp32 1e-4 relative).

Each model is saved with save_pretrained and loaded through `autodeploy.optimize(dir, "cpu")`, with
the transforms after the CANONICALIZE stage switched off so the canonical graph itself is checked.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autodeploy
import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.transforms.pipeline import Stage, ordered_specs
from tests.helpers.tiny_models import ARCHS, save_tiny, tiny_model
from tests.helpers.tolerances import assert_close_relative

ops = torch.ops.autodeploy


def canonical_only() -> dict:
    return {f"transforms.{s.name}.enabled": False for s in ordered_specs() if s.stage > Stage.CANONICALIZE}


def expected_counts(model: nn.Module) -> dict:
    """What the HF model holds: RMSNorm modules, dense gated MLPs (Linear gate projections), layers."""
    cfg = model.config
    norms = sum(type(m).__name__.endswith("RMSNorm") for m in model.modules())
    dense_mlps = sum(isinstance(getattr(m, "gate_proj", None) or getattr(m, "gate_up_proj", None), nn.Linear)
                     for m in model.modules())
    return {
        ops.attention.default: cfg.num_hidden_layers,
        ops.rope.default: 0 if cfg.model_type == "gpt2" else cfg.num_hidden_layers,
        ops.rmsnorm.default: norms,
        ops.gated_mlp_act.default: dense_mlps,
    }


def check_canonical_graph(gm, expected: dict) -> None:
    for op, n in expected.items():
        assert len(nodes_of(gm, op)) == n, f"expected {n} x {op}, found {len(nodes_of(gm, op))}"
    assert not nodes_of(gm, aten.scaled_dot_product_attention), "SDPA left"
    scores = [n for n in nodes_of(gm, (aten.softmax, aten._softmax)) if n.meta["val"].dim() == 4]
    assert not scores, "softmax over attention scores left"
    assert not [n for n in nodes_of(gm, aten.expand) if n.meta["val"].dim() == 5], "repeat_kv expand left"


def logits_inputs(b=2, s=11):
    ids = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(1))
    return ids, torch.arange(s).expand(b, s)


@pytest.mark.parametrize("arch", ARCHS)
def test_canonical_ops_and_logits(arch, tmp_path):
    save_tiny(arch, tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", dtype="float32", overrides=canonical_only())
    reference = tiny_model(arch)  # the same seed: the weights that were saved
    check_canonical_graph(rt.graph_module, expected_counts(reference))
    infos = {i.name: i for i in rt.report}
    for name in ("match_attention", "match_rope", "match_rmsnorm", "match_gated_mlp"):
        assert infos[name].warning is None, f"{name}: {infos[name].warning}"
    for b, s in ((2, 11), (1, 20)):  # windows of the tiny configs are 8: both shapes slide
        ids, pos = logits_inputs(b, s)
        with torch.no_grad():
            expected = reference(input_ids=ids, position_ids=pos).logits
            actual = rt.graph_module(ids, pos)
        assert_close_relative(actual, expected)


@pytest.mark.slow
def test_smollm2(tmp_path):
    from transformers import AutoModelForCausalLM

    rt = autodeploy.optimize("example:smollm2", "cpu", dtype="float32", overrides=canonical_only())
    reference = AutoModelForCausalLM.from_pretrained(rt.source.location, dtype=torch.float32).eval()
    check_canonical_graph(rt.graph_module, expected_counts(reference))
    ids, pos = logits_inputs(1, 24)
    ids = ids % reference.config.vocab_size
    with torch.no_grad():
        assert_close_relative(rt.graph_module(ids, pos), reference(input_ids=ids, position_ids=pos).logits)
