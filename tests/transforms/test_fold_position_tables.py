"""fold_position_tables: RoPE's cos / sin (anything computed from position_ids and buffers alone) -> one lookup.

Real tiny models exported as `autodeploy.optimize` does (meta parameters, real inv_freq buffers), and with
real weights for numerics: the folded graph must give the eager model's logits bit for bit (the table is
the graph's own ops evaluated per position, on the same device).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autodeploy.ops  # noqa: F401
from autodeploy.export import export_model
from autodeploy.graph import aten, nodes_of
from autodeploy.models.weights import load_weights
from tests.helpers.tiny_models import tiny_model
from tests.helpers.transform_check import count, run_transforms
from tests.quantization.models import meta_graph, model_state, quant_recipe

LOOKUP = torch.ops.autodeploy.position_table.default
STEPS = ["cleanup_export", "fold_position_tables"]


def folded(arch: str, **cfg):
    gm = meta_graph(arch)
    assert count(gm, aten.cos) >= 1 and count(gm, LOOKUP) == 0
    recipe = quant_recipe(fold_position_tables=cfg)
    # cleanup_export first, as in the pipeline: the export's metadata asserts would keep the old ops alive
    return gm, run_transforms(gm, STEPS, recipe=recipe)["fold_position_tables"], recipe


@pytest.mark.parametrize("arch,values", [("llama", 2), ("qwen3", 2), ("phi3", 2), ("gemma3_text", 4)])
def test_cos_sin_become_one_lookup(arch, values):
    gm, info, recipe = folded(arch)
    assert info.matches == values and info.details["tables"] == 1 and not info.details["skipped"]
    assert count(gm, LOOKUP) == 1 and count(gm, aten.cos) == 0 and count(gm, aten.sin) == 0
    (lookup,) = nodes_of(gm, LOOKUP)
    table = getattr(gm, lookup.args[0].target)
    assert table.shape[:2] == (values, recipe.runtime.max_seq_len) and table.is_meta  # beside the meta weights


def test_table_rows_are_the_rotary_embedding():
    """Loaded, the table holds the model's own cos / sin rows at every position."""
    model = tiny_model("llama")
    gm, info, recipe = folded("llama")
    load_weights(gm, model_state(model), torch.device("cpu"))
    (lookup,) = nodes_of(gm, LOOKUP)
    table = getattr(gm, lookup.args[0].target)  # [2, L, d]
    positions = torch.arange(recipe.runtime.max_seq_len)[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    assert torch.equal(table[0], cos[0]) and torch.equal(table[1], sin[0])


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_logits_bit_identical_to_eager(arch):
    model = tiny_model(arch)
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(3, 12).expand(2, 9)  # not from 0: a chunk in the middle of a sequence
    want = gm(ids, positions)
    run_transforms(gm, STEPS, recipe=quant_recipe(fold_position_tables={}))
    assert count(gm, LOOKUP) == 1
    assert torch.equal(gm(ids, positions), want)
    with torch.no_grad():
        assert torch.equal(want, model(input_ids=ids, position_ids=positions).logits)


def test_loaded_graph_matches_the_unfolded_one():
    """Meta export, fold, load (the WeightPlan hook computes the table on the load device): same logits as the
    same graph loaded without the fold."""
    model = tiny_model("llama")
    plain, (gm, _, _) = meta_graph("llama"), folded("llama")
    for g in (plain, gm):
        load_weights(g, model_state(model), torch.device("cpu"))
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[7, 8, 9, 10, 11]])
    assert count(gm, LOOKUP) == 1 and count(plain, LOOKUP) == 0
    assert torch.equal(gm(ids, positions), plain(ids, positions))


def test_learned_positions_are_weights_not_tables():
    """GPT-2's position embedding is a checkpoint weight (meta at transform time): nothing to fold."""
    gm = meta_graph("gpt2")
    info = run_transforms(gm, STEPS, recipe=quant_recipe(fold_position_tables={}))
    assert info["fold_position_tables"].matches == 0 and count(gm, LOOKUP) == 0


def test_table_size_limit():
    gm, info, _ = folded("llama", max_table_mb=0.01)
    assert info.matches == 0 and "max_table_mb" in info.details["skipped"][0] and count(gm, aten.cos) == 1


class MixesPositions(nn.Module):
    """A value that depends on other tokens' positions (a running sum) beside a per-position one."""

    def __init__(self):
        super().__init__()
        self.register_buffer("freq", torch.tensor([0.5, 0.25]), persistent=False)
        self.proj = nn.Linear(2, 2)

    def forward(self, x, position_ids):
        per_position = torch.cos(position_ids[..., None].float() * self.freq)  # [b, s, 2]
        running = position_ids.float().cumsum(-1)[..., None] * self.freq  # [b, s, 2]: not per position
        return self.proj(x) * per_position + running


def test_value_mixing_positions_is_left_alone():
    module = MixesPositions()
    x = torch.randn(1, 6, 2)
    positions = torch.tensor([[4, 9, 1, 0, 7, 3]])
    gm = torch.export.export(module, (x, positions), strict=False).module()
    want = gm(x, positions)
    info = run_transforms(gm, STEPS, recipe=quant_recipe(fold_position_tables={}))
    info = info["fold_position_tables"]
    assert info.matches == 1 and count(gm, LOOKUP) == 1 and count(gm, aten.cumsum) == 1
    assert any("not a function of each position" in s for s in info.details["skipped"])
    assert torch.equal(gm(x, positions), want)


def test_positions_past_the_table_are_clamped():
    table = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    out = torch.ops.autodeploy.position_table(table, torch.tensor([[0, 3, 9, -2]]))
    assert out.shape == (2, 1, 4, 3)
    assert torch.equal(out[:, 0], table[:, [0, 3, 3, 0]])


def test_derived_on_another_device_than_at_transform_time():
    """The table is built on the CPU at transform time, then derived where the weights load: the subgraph kept
    for that must still name the traced (meta) device, not the CPU it ran on first (GPU runs failed so:
    inv_freq stayed on the CPU beside CUDA positions). The meta device stands in for the GPU here."""
    from autodeploy.models.weights import weight_plan

    gm, info, recipe = folded("llama")
    (derive,) = weight_plan(gm).derived.values()
    table = derive(torch.device("meta"))
    assert table.is_meta and table.shape[:2] == (2, recipe.runtime.max_seq_len)
    assert torch.equal(derive(torch.device("cpu")), derive(torch.device("cpu")))
