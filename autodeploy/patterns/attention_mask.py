"""What an attention mask computes, found by running the subgraph that builds it on a probe input.

transformers builds masks in many ways (vmap'ed index / compare / and chains, torch.where to an
additive 0 / min mask, per-layer-type sliding masks), and their shape in the graph changes from
release to release. The canonical attention op is causal with an optional window, so the matcher
only needs to know: is this mask exactly causal (with window w)? Asking the graph is more robust
than recognizing a spelling: `probe_mask` evaluates the mask's ancestors on the CPU with batch 1,
sequence length P and positions 0..P-1, and reads the band off the result.

    mask [b, 1, s, s] (bool: True = attend; or additive: 0 = attend, <= finfo.min / 2 = masked)
    -> MaskInfo(window=None)   causal
    -> MaskInfo(window=w)      causal and key j visible from query i only if i - w < j
    -> None                    anything else (padding-free prefix-LM, chunked, ALiBi bias, ...)

P must exceed the window to see it: callers pass the config's window + a margin. Parameters
on the meta device are replaced by zero-stride zeros (a mask never reads weight values).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import fx

log = logging.getLogger(__name__)

MAX_PROBE = 8192  # a window longer than this is taken from the config, unverified


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    window: int | None


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _sym_expr(dim):
    return dim.node.expr if isinstance(dim, torch.SymInt) else None


def _probe_input(ph: fx.Node, seq_expr, batch_expr, p: int) -> torch.Tensor | None:
    v = ph.meta.get("val")
    if not isinstance(v, torch.Tensor):
        return None
    shape = []
    for dim in v.shape:
        expr = _sym_expr(dim)
        if expr is None:
            shape.append(int(dim))
        elif expr == seq_expr:
            shape.append(p)
        elif expr == batch_expr:
            shape.append(1)
        else:
            shape.append(int(dim.node.hint))
    if v.dtype.is_floating_point or "position" not in str(ph.target):
        return torch.zeros(shape, dtype=v.dtype)
    # positions 0..P-1 along the sequence dim (the last one of position_ids [b, s])
    return torch.arange(shape[-1], dtype=v.dtype).expand(shape).contiguous()


def _evaluate(gm: fx.GraphModule, mask: fx.Node, p: int) -> torch.Tensor | None:
    val = mask.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    seq_expr = _sym_expr(val.shape[-1])
    batch_expr = _sym_expr(val.shape[0]) if val.dim() == 4 else None
    needed = _ancestors(mask)
    env: dict[fx.Node, object] = {}
    for n in gm.graph.nodes:
        if n not in needed:
            continue
        if n.op == "placeholder":
            env[n] = _probe_input(n, seq_expr, batch_expr, p)
            if env[n] is None:
                return None
        elif n.op == "get_attr":
            t = gm
            for part in str(n.target).split("."):
                t = getattr(t, part)
            env[n] = torch.zeros((), dtype=t.dtype).expand(t.shape) if t.device.type == "meta" else t.cpu()
        elif n.op == "call_function":
            args = fx.node.map_arg(n.args, env.__getitem__)
            kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
            if "device" in kwargs:
                kwargs = {**kwargs, "device": torch.device("cpu")}
            env[n] = n.target(*args, **kwargs)
        else:
            return None
    out = env[mask]
    return out if isinstance(out, torch.Tensor) else None


def _attend(m: torch.Tensor) -> torch.Tensor | None:
    """[s_q, s_k] bool of the first batch row and head; None for a bias that is not a pure mask."""
    m = m.reshape(-1, m.shape[-2], m.shape[-1])[0]
    if m.dtype == torch.bool:
        return m
    if not m.dtype.is_floating_point:
        return None
    keep, drop = m == 0, m <= torch.finfo(m.dtype).min / 2
    return keep if bool((keep | drop).all()) else None


def _band(attend: torch.Tensor) -> MaskInfo | None:
    s_q, s_k = attend.shape
    if s_q != s_k:
        return None
    i = torch.arange(s_q).unsqueeze(1)
    j = torch.arange(s_k).unsqueeze(0)
    w = int(attend[-1].sum())
    if w == 0 or not torch.equal(attend, (j <= i) & (j > i - w)):
        return None
    return MaskInfo(window=None if w >= s_k else w)


def probe_mask(gm: fx.GraphModule, mask: fx.Node, probe_len: int) -> MaskInfo | None:
    """Causal / sliding-window band of `mask` on a probe of `probe_len` tokens, else None."""
    try:
        with torch.no_grad():
            out = _evaluate(gm, mask, probe_len)
    except Exception as e:  # an op the probe cannot run on the CPU: the mask stays unproven
        log.debug("mask probe of %s failed: %s", mask.name, e)
        return None
    attend = _attend(out) if out is not None else None
    return _band(attend) if attend is not None else None
