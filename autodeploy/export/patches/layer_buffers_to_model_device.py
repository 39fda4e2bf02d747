"""Boolean / integer buffers of layers with parameters go to the parameters' device while exporting.

HF quirk: GPT-Neo's attention keeps its causal (and local-window) mask as a non-persistent bool
buffer `bias` [1, 1, max_pos, max_pos] and slices it inside forward with no `.to(device)`.
Non-persistent buffers stay real on the CPU when the model is built on the meta device
(models/factory.build_meta_model keeps computed tables real), so export fails in
`torch.where(causal_mask, attn_weights, mask_value)`:

    RuntimeError: Tensor on device meta is not on the expected device cpu!

Fix, during export only: every non-floating buffer on another device than the parameters, held
by a module that has parameters (its own or its sub-layers'), is swapped for an empty meta tensor of the same shape
and dtype, and restored on exit. The exported graph keeps it as a buffer; `load_weights` fills it
from the materialized model (whose state lists non-persistent buffers too). Floating buffers
(RoPE inv_freq / sin-cos tables) stay real: graph facts and the RoPE matcher read their values,
and parameter-free rotary modules are handled by buffer_tables_to_model_device.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def _param_device(model: nn.Module) -> torch.device | None:
    return next((p.device for p in model.parameters()), None)


def _mask_buffers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    device = _param_device(model)
    if device is None:
        return []
    out = []
    for mod in model.modules():
        if next(mod.parameters(), None) is None:  # parameters of its own or of its sub-layers
            continue
        for name, buf in mod._buffers.items():
            if buf is not None and buf.device != device and not buf.is_floating_point():
                out.append((mod, name))
    return out


def applies(model: nn.Module) -> bool:
    return bool(_mask_buffers(model))


@contextlib.contextmanager
def patch(model: nn.Module) -> Iterator[None]:
    device = _param_device(model)
    saved = []
    for mod, name in _mask_buffers(model):
        buf = mod._buffers[name]
        saved.append((mod, name, buf))
        mod._buffers[name] = torch.empty_like(buf, device=device)
    try:
        yield
    finally:
        for mod, name, buf in saved:
            mod._buffers[name] = buf
