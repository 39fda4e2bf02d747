"""Parameter-free modules holding a real buffer hand their outputs over on the model's device.

HF quirk: CodeGen's and GPT-J's rotary embeddings index a precomputed sin/cos table
(`embed_positions`, a non-persistent buffer) with position_ids and return the rows as they are,
where Llama-style rotary embeddings end with `.to(x.device)`. Export runs with parameters on the
meta device and non-persistent buffers kept real on the CPU (models/factory.build_meta_model: RoPE
tables are computed, not loaded), so attention then multiplies a meta query by a CPU table:

    RuntimeError: Tensor on device cpu is not on the expected device meta!

Fix, during export only: the forward of every module that has no parameters and owns a buffer on
another device than the parameters returns its tensors moved to the parameters' device. The graph
records one `_to_copy(device=meta)` per output, which export/device.retarget_device points at the
runtime device after loading; outputs already on that device (Llama's) add nothing.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_map


def _param_device(model: nn.Module) -> torch.device | None:
    return next((p.device for p in model.parameters()), None)


def _table_modules(model: nn.Module) -> list[nn.Module]:
    device = _param_device(model)
    if device is None:
        return []
    out = []
    for mod in model.modules():
        if next(mod.parameters(), None) is not None:
            continue
        if any(b is not None and b.device != device for b in mod._buffers.values()):
            out.append(mod)
    return out


def applies(model: nn.Module) -> bool:
    return bool(_table_modules(model))


def _on(device: torch.device, forward):
    def moved(*args, **kwargs):
        out = forward(*args, **kwargs)
        return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) and t.device != device else t, out)

    return moved


@contextlib.contextmanager
def patch(model: nn.Module) -> Iterator[None]:
    device = _param_device(model)
    mods = _table_modules(model)
    for mod in mods:
        mod.forward = _on(device, mod.forward)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for mod in mods:
            del mod.forward
