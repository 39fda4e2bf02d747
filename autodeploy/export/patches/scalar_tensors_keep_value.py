"""`torch.tensor(python_scalar, device=meta)` inside forward is built on the CPU, so its value survives.

HF quirk: GPT-Neo's attention (and other pre-SDPA code) builds its mask fill value as
`torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=attn_weights.device)`. With the model on
the meta device that device is meta, and export lifts the result into the graph as a constant
(`lifted_tensor_0`) that is a meta tensor: it has no value, nothing in the checkpoint restores it,
and the loaded graph fails at run time with

    RuntimeError: Tensor on device meta is not on the expected device cpu!

Fix, during export only: `torch.tensor` of a Python scalar (a 0-dim result) asked for the meta device
is created on the CPU instead. A 0-dim CPU tensor mixes with tensors of any device (PyTorch treats
it as a scalar), so the traced ops are unchanged and the lifted constant keeps its value.
"""

from __future__ import annotations

import contextlib
from numbers import Number
from typing import Iterator

import torch
from torch import nn


def _on_meta(model: nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.is_meta


def applies(model: nn.Module) -> bool:
    return _on_meta(model)


@contextlib.contextmanager
def patch(model: nn.Module) -> Iterator[None]:
    original = torch.tensor

    def tensor(data, *args, **kwargs):
        device = kwargs.get("device")
        if isinstance(data, (Number, bool)) and device is not None and torch.device(device).type == "meta":
            kwargs["device"] = "cpu"
        return original(data, *args, **kwargs)

    torch.tensor = tensor
    try:
        yield
    finally:
        torch.tensor = original
