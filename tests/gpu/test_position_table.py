"""fold_position_tables on CUDA: the table is derived on the GPU when the weights load, the lookup runs the one-launch
Triton twin, and the folded graph's logits equal the unfolded graph's bit for bit (the same cos / sin kernels,
evaluated per position); the lookup also replays inside a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from autodeploy.graph import nodes_of
from autodeploy.models.weights import load_weights
from tests.helpers.tiny_models import tiny_model
from tests.helpers.transform_check import run_transforms
from tests.quantization.models import meta_graph, model_state, quant_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_folded_logits_equal_the_unfolded_on_the_gpu(arch):
    import autodeploy.backends.triton  # noqa: F401  (autodeploy::triton_position_table)

    model = tiny_model(arch)
    plain, folded = meta_graph(arch), meta_graph(arch)
    recipe = quant_recipe(fold_position_tables={})
    run_transforms(plain, ["cleanup_export"], recipe=recipe)  # the export's asserts name the CPU it was traced on
    run_transforms(folded, ["cleanup_export", "fold_position_tables"], recipe=recipe)
    (lookup,) = nodes_of(folded, torch.ops.autodeploy.position_table.default)
    lookup.target = torch.ops.autodeploy.triton_position_table.default  # what select_backends picks on CUDA
    folded.recompile()
    for g in (plain, folded):
        load_weights(g, model_state(model), torch.device("cuda"))
    table = getattr(folded, lookup.args[0].target)
    assert table.is_cuda
    ids = torch.randint(0, 256, (1, 6), device="cuda")
    positions = torch.tensor([[0, 1, 2, 500, 1000, 2047]], device="cuda")
    with torch.no_grad():
        want, got = plain(ids, positions), folded(ids, positions)
    assert torch.equal(got, want)


def test_lookup_replays_in_a_cuda_graph():
    from autodeploy.backends.triton import position_table

    table = torch.randn(2, 64, 128, device="cuda", dtype=torch.bfloat16)
    pos = torch.tensor([[3, 9]], device="cuda")
    graph = torch.cuda.CUDAGraph()
    position_table.lookup(table, pos)  # compile off the capture
    with torch.cuda.graph(graph):
        out = position_table.lookup(table, pos)
    pos.copy_(torch.tensor([[63, 70]]))  # the next step's positions, 70 past the table: clamped
    graph.replay()
    assert torch.equal(out[:, 0], table[:, [63, 63]])
