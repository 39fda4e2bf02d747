"""Buffers held by layers with parameters go to the parameters' device while exporting.

HF quirk: GPT-Neo's and OpenAI-GPT's attention keep their causal mask as a non-persistent buffer
`bias` [1, 1, max_pos, max_pos] (bool / float tril) and slice it inside forward with no
`.to(device)`; XLM indexes a `position_ids` arange buffer the same way; XGLM's parameter-free
sinusoidal embedding `index_select`s its [max_pos, d] table with the (meta) position ids, and
CodeGen's / GPT-J's rotary embeddings index their sin/cos table `embed_positions` and hand the
CPU rows to attention.
Non-persistent buffers stay real on the CPU when the model is built on the meta device
(models/factory.build_meta_model keeps computed tables real), so export fails in
`torch.where(causal_mask, attn_weights, mask_value)`:

    RuntimeError: Tensor on device meta is not on the expected device cpu!

Fix, during export only: every buffer on another device than the parameters that is held
directly by a module with parameters (its own or its sub-layers'), or that is a table (2-D or
more) of a parameter-free module, is swapped for an empty meta tensor of the same shape and
dtype, and restored on exit. The exported graph keeps it as a buffer; `load_weights` fills it
from the materialized model (whose state lists non-persistent buffers too). Rotary embeddings'
1-D inv_freq vectors stay real: graph facts read RoPE theta from them, and those modules move
their results to the input's device themselves.

Cost: transforms see these buffers as meta, so a matcher that evaluates a mask buffer's values
(to prove it causal) cannot, and that attention stays on transformers' path (still exact).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def _param_device(model: nn.Module) -> torch.device | None:
    return next((p.device for p in model.parameters()), None)


def _layer_buffers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    device = _param_device(model)
    if device is None:
        return []
    out = []
    for mod in model.modules():
        layer = next(mod.parameters(), None) is not None  # parameters of its own or of its sub-layers
        for name, buf in mod._buffers.items():
            if buf is not None and buf.device != device and (layer or buf.dim() >= 2):
                out.append((mod, name))
    return out


def applies(model: nn.Module) -> bool:
    return bool(_layer_buffers(model))


@contextlib.contextmanager
def patch(model: nn.Module) -> Iterator[None]:
    device = _param_device(model)
    saved = []
    for mod, name in _layer_buffers(model):
        buf = mod._buffers[name]
        saved.append((mod, name, buf))
        mod._buffers[name] = torch.empty_like(buf, device=device)
    try:
        yield
    finally:
        for mod, name, buf in saved:
            mod._buffers[name] = buf
