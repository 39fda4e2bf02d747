"""export_model: dims stay dynamic whatever the recipe's limits; the exported signature is plain."""

from __future__ import annotations

import pytest
import torch

from autodeploy.export import export_model
from tests.helpers.tiny_models import tiny_model


@pytest.mark.parametrize("max_batch_size, max_seq_len", [(1, 4), (2, 8)])
def test_small_limits_keep_dims_dynamic(max_batch_size, max_seq_len):
    """Limits at or below the example sizes (batch 2, seq 8) still export with symbolic dims."""
    model = tiny_model("llama")
    gm = export_model(model, max_batch_size=max_batch_size, max_seq_len=max_seq_len)
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        assert all(isinstance(d, torch.SymInt) for d in node.meta["val"].shape)
    ids = torch.randint(0, 256, (1, 3))
    pos = torch.arange(3)[None]
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        assert torch.equal(gm(ids, pos), expected)  # plain positional call, logits out
