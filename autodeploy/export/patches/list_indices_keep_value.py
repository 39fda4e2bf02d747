"""Indexing with a Python list (`qkv[:, :, :, [-2]]`) uses a CPU index tensor, so its values survive export.

HF quirk: Falcon's multi-query / new-architecture attention picks its key and value heads out of the
fused projection with list indices, `qkv[:, :, :, [-2]]` and `[-1]`. PyTorch turns the list into an
index tensor on the indexed tensor's device; with the model on the meta device that is a meta
tensor, which export lifts into the graph as a constant (`lifted_tensor_0`) with no values. The
loaded graph then gathers with garbage indices: no error, just wrong (huge) activations.

Fix, during export only: list-of-int items of an index become int64 CPU tensors before indexing.
PyTorch accepts CPU index tensors for tensors on any device, so the traced `aten.index` is the
same op, and the lifted constant holds the real indices.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def applies(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.is_meta


def _int_list(item) -> bool:
    return isinstance(item, list) and bool(item) and all(isinstance(i, int) and not isinstance(i, bool) for i in item)


def _cpu_indices(index):
    if _int_list(index):
        return torch.tensor(index, dtype=torch.long, device="cpu")
    if isinstance(index, tuple) and any(_int_list(i) for i in index):
        return tuple(torch.tensor(i, dtype=torch.long, device="cpu") if _int_list(i) else i for i in index)
    return index


@contextlib.contextmanager
def patch(model: nn.Module) -> Iterator[None]:
    original = torch.Tensor.__getitem__

    def getitem(self, index):
        return original(self, _cpu_indices(index))

    torch.Tensor.__getitem__ = getitem
    try:
        yield
    finally:
        torch.Tensor.__getitem__ = original
