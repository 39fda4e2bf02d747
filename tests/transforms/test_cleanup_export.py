"""cleanup_export: metadata asserts, no-op casts, aliases and full-range slices go; real casts and slices stay."""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from autodeploy.graph import aten
from tests.helpers.transform_check import check_transform

DYN = ({0: Dim.DYNAMIC(min=1, max=16), 1: Dim.DYNAMIC(min=1, max=64)},)


class Casts(nn.Module):
    """An fp32 -> fp32 cast (no-op), an alias, then a real round trip through fp16."""

    def forward(self, x):  # x [b, s] fp32
        y = x.to(torch.float32)
        z = torch.ops.aten.alias(y)
        h = z.to(torch.float16)
        return h.float() * 2


def test_cleanup_export_removes_asserts_noop_casts_and_aliases():
    check_transform(
        Casts(),
        [torch.randn(2, 8)],
        "cleanup_export",
        # export records one metadata assert per `.to()`; three casts, one of them a no-op
        before={aten._assert_tensor_metadata.default: 3, aten.to.dtype: 3, aten.alias.default: 1},
        after={aten._assert_tensor_metadata.default: 0, aten.to.dtype: 2, aten.alias.default: 0, aten.mul.Tensor: 1},
        matches=5,
        second_inputs=[torch.randn(5, 3)],
        dynamic_shapes=DYN,
    )


class Slices(nn.Module):
    """`x[:, None, :]` leaves full-range slices on dims 0 and 2; `x[:, 1:]` is a real slice."""

    def forward(self, x):  # x [b, s]
        return x[:, None, :] * x[:, 1:].sum()


def test_cleanup_export_removes_full_range_slices_only():
    check_transform(
        Slices(),
        [torch.randn(2, 8)],
        "cleanup_export",
        before={aten.slice.Tensor: 4, aten.unsqueeze.default: 1},
        after={aten.slice.Tensor: 1, aten.unsqueeze.default: 1, aten.sum.default: 1},
        matches=3,
        second_inputs=[torch.randn(4, 3)],
        dynamic_shapes=DYN,
    )


class NothingToClean(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


def test_cleanup_export_on_a_clean_graph_matches_nothing():
    check_transform(
        NothingToClean(),
        [torch.randn(2, 8)],
        "cleanup_export",
        before={aten.relu.default: 1},
        after={aten.relu.default: 1, aten.add.Tensor: 1},
        matches=0,
        second_inputs=[torch.randn(3, 4)],
        dynamic_shapes=DYN,
    )
