"""torch.export of an HF causal LM into an FX GraphModule with dynamic batch and sequence dims.

The exported program is a logits-only wrapper:  (input_ids [b, s], position_ids [b, s]) -> logits [b, s, vocab].
Export is non-strict and runs on the meta device (no weight memory); the HF model's quirks are
handled by the patches in export/patches/.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from pathlib import Path
from typing import Iterator

import torch
from torch import fx, nn
from torch.export import Dim

from autodeploy.errors import ExportError
from autodeploy.export import cache as export_cache
from autodeploy.export.patches import apply_patches

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """The HF model without cache or extra outputs: what the runtime calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits


# batch 2, seq 8: neither is 0 or 1, so export keeps both dims symbolic.
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8


def _example_inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(EXAMPLE_BATCH, EXAMPLE_SEQ, dtype=torch.long, device=device)
    pos = torch.arange(EXAMPLE_SEQ, device=device).unsqueeze(0).expand(EXAMPLE_BATCH, EXAMPLE_SEQ)
    return ids, pos


def _failing_module(tb, model: nn.Module) -> str | None:
    """The innermost model submodule in the traceback: `layers.0.mlp (LlamaMLP.forward at file.py:12)`."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        self_obj = frame.f_locals.get("self")
        if isinstance(self_obj, nn.Module) and id(self_obj) in names:
            where = f"{type(self_obj).__name__}.{frame.f_code.co_name} at {frame.f_code.co_filename.rsplit('/', 1)[-1]}:{lineno}"
            found = f"{names[id(self_obj)] or 'the model'} ({where})"
    return found


def _describe_failure(exc: BaseException, model: nn.Module) -> str:
    msg = str(exc).strip().splitlines()
    first = next((line.strip() for line in msg if line.strip()), type(exc).__name__)
    module = _failing_module(exc.__traceback__, model)
    where = f" in {module}" if module else ""
    return f"{type(exc).__name__}{where}: {first[:300]}"


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """On a failed export torch prints the whole partial graph to stderr and logs a warning about
    it (hundreds of lines); the ExportError already names the module. Unless autodeploy logs at
    DEBUG, those loggers stay at ERROR and torch.export's own module-level `print` is muted."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    from torch.export import _trace

    loggers = [logging.getLogger(n) for n in _NOISY_TORCH_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    had_print = "print" in vars(_trace)
    saved_print = vars(_trace).get("print")
    _trace.print = lambda *args, **kwargs: None  # shadows the builtin inside that module only
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if had_print:
            _trace.print = saved_print
        else:
            del _trace.print


_NOISY_TORCH_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")


def _flatten_signature(gm: fx.GraphModule) -> None:
    """Drop the pytree calling convention: gm(input_ids, position_ids) -> logits, plain positional.

    Later transforms add graph inputs (sequence metadata, KV caches) and outputs; with the
    exported in/out specs in place every such change would also have to edit the specs.
    """
    gm.graph._codegen = fx.graph.CodeGen()
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    result = out.args[0]
    if isinstance(result, (tuple, list)) and len(result) == 1:
        out.args = (result[0],)
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            n.meta.pop("tensor_meta", None)
    gm.recompile()


def export_model(
    model: nn.Module,
    *,
    max_batch_size: int = 64,
    max_seq_len: int = 4096,
    cache_root: Path | None = None,
) -> fx.GraphModule:
    """Export `model` (parameters may be on meta) and return the unlifted GraphModule.

    With `cache_root`, the exported program is looked up in (and saved to) the export cache
    (export/cache.py): a hit skips tracing.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    wrapper = LogitsOnly(model).eval()
    # Dim.DYNAMIC hints, not named Dims: named Dims turn every guard sympy cannot prove over the
    # whole range into a hard error (torch 2.11 fails on `min(16*s, 32*s) == 16*s` from repeat_kv
    # strides); hints keep the dims symbolic and only refuse a specialization to a constant.
    # The example sizes must lie strictly inside the ranges: an upper bound equal to the example
    # (max_batch_size 2 or less) makes torch infer the dim static and refuse the hint.
    max_b, max_s = max(max_batch_size, EXAMPLE_BATCH + 1), max(max_seq_len, EXAMPLE_SEQ + 1)
    batch = Dim.DYNAMIC(min=1, max=max_b)
    seq = Dim.DYNAMIC(min=1, max=max_s)
    dynamic_shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    key = export_cache.cache_key(model, max_b, max_s) if cache_root is not None else None
    hit = export_cache.load(cache_root, key) if key else None
    if hit is not None:
        ep, applied = hit
        log.info("export cache hit %s", key)
    else:
        ep, applied = _trace(model, wrapper, device, dynamic_shapes)
        if key:
            export_cache.save(cache_root, key, ep, applied)
    gm = ep.module()
    _flatten_signature(gm)
    gm.meta["export_patches"] = applied
    gm.meta["dynamic_dims"] = {"batch": (1, max_b), "seq": (1, max_s)}
    return gm


def _trace(model: nn.Module, wrapper: nn.Module, device: torch.device, dynamic_shapes) -> tuple:
    """(ExportedProgram, names of the patches applied) from torch.export, or ExportError."""
    with apply_patches(model) as applied, torch.inference_mode(False), torch.no_grad():
        if applied:
            log.info("export patches: %s", ", ".join(applied))
        try:
            with _quiet_torch():
                ep = torch.export.export(wrapper, _example_inputs(device), dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as e:  # torch raises many types; the user needs the module and op that failed
            raise ExportError(f"cannot export {type(model).__name__}: {_describe_failure(e, model)}") from e
    return ep, list(applied)
