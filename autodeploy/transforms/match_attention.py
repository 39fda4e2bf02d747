"""match_attention: transformers' attention spellings -> one autodeploy::attention per layer.

    before:  q [b,n,s,d] ────────────────────────────────────────┐
             k [b,n_kv,s,d] ─ unsqueeze ─ expand ─ reshape (repeat_kv) ─ sdpa(q, k, v, mask, scale) ─ o
             v [b,n_kv,s,d_v] ─ unsqueeze ─ expand ─ reshape ─────────┘        │
             position_ids ─ ... index / le / and ... ─ mask ───────────────────┘
             (eager: matmul ─ mul(scale) ─ [div, tanh, mul (softcap)] ─ add(mask) ─ [cat sinks, max, sub]
              ─ softmax ─ [slice] ─ dropout ─ matmul)
    after:   q ─ transpose(1,2) ─┐
             k ─ transpose(1,2) ─ autodeploy.attention(q, k, v, sinks, scale, causal=True,
             v ─ transpose(1,2) ─┘                     sliding_window=w, logit_softcap=c) ─ transpose(1,2) ─ o
             (the mask subgraph loses its users and is removed; back-to-back transposes cancel)

The window comes from the mask, not from a spelling: `patterns/attention_mask.probe_mask` runs the
mask's subgraph on a probe of P tokens and accepts only an exact causal band, whose width is the
window. The config (sliding_window, layer_types) only sizes the probe, P = largest window + 8, and
supplies windows longer than the probe can show (> 8192 tokens). A mask that is not a causal band
(prefix-LM, chunked, a bias) leaves that attention un-rewritten, with a warning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from autodeploy.graph import aten, nodes_of
from autodeploy.patterns.attention import ATTENTION_PATTERNS
from autodeploy.patterns.attention_mask import MAX_PROBE, MaskInfo, probe_mask
from autodeploy.patterns.layout import LAYOUT_PATTERNS
from autodeploy.patterns.registry import Match, apply_patterns
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


def config_windows(cfg) -> list[int | None] | None:
    """Sliding window per layer from the HF config (layer_types where present), or None if unknown."""
    if cfg is None:
        return None
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = getattr(cfg, "num_hidden_layers", None)
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False:  # Qwen2 keeps a window it does not use
        window = None
    types = getattr(cfg, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types]
    return [window] * layers if layers else None


@dataclasses.dataclass
class _Context:
    gm: Any
    probe_len: int
    windows: list[int | None] | None
    probes: dict = dataclasses.field(default_factory=dict)  # mask node -> MaskInfo | None
    rejected: dict = dataclasses.field(default_factory=dict)  # reason -> count
    index: int = 0  # attention layers accepted so far (graph order = layer order)

    def reject(self, reason: str) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return False

    def check(self, m: Match):
        return attention_check(m)


def _shapes_ok(m: Match) -> bool:
    q, k, v = m.val("q"), m.val("k"), m.val("v")
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)):
        return False
    n, n_kv = q.shape[1], k.shape[1]
    if v.shape[1] != n_kv or n % n_kv or k.shape[-1] != q.shape[-1] or not q.dtype.is_floating_point:
        return False
    # repeat_kv must repeat to the query heads (its expand sizes are wildcards in the pattern)
    repeated = [g.meta.get("val") for g in m.graph_nodes(aten.reshape.default)]
    if any(r is None or r.shape[1] != n for r in repeated):
        return False
    sinks = m.val("sinks") if "sinks" in m.inputs else None
    if sinks is not None and (not isinstance(sinks, torch.Tensor) or tuple(sinks.shape) != (n,)):
        return False
    return isinstance(m.inputs["scale"], float) and isinstance(m.inputs.get("softcap", 0.0), float)


def attention_check(m: Match):
    """Shapes, then the mask's proof; accepts with the window for the replacement."""
    ctx: _Context = m.context
    if not _shapes_ok(m):
        return ctx.reject("shapes")
    mask = m.inputs.get("mask")
    if mask is None:
        info = MaskInfo(window=None)  # is_causal=True
    else:
        val = mask.meta.get("val") if hasattr(mask, "meta") else None
        if not isinstance(val, torch.Tensor) or val.dim() != 4 or val.shape[1] != 1:
            return ctx.reject("mask is not [b, 1, s, s]")
        if mask not in ctx.probes:
            ctx.probes[mask] = probe_mask(ctx.gm, mask, ctx.probe_len)
        info = ctx.probes[mask]
        if info is None:
            return ctx.reject("mask is not causal or a causal sliding window")
    window = info.window
    configured = ctx.windows[ctx.index] if ctx.windows and ctx.index < len(ctx.windows) else None
    if window is None and configured is not None and configured >= ctx.probe_len:
        window = configured  # longer than the probe can show
    ctx.index += 1
    return {"sliding_window": window}


def _probe_len(windows) -> int:
    longest = max((w for w in windows or [] if w), default=0)
    return min(max(16, longest + 8), MAX_PROBE)


def _leftover_attention(gm) -> list:
    """SDPA calls and softmaxes over [b, n, s, s] scores (a router's 2-D softmax is not attention)."""
    softmaxes = [n for n in nodes_of(gm, (aten.softmax, aten._softmax)) if getattr(n.meta.get("val"), "ndim", 0) == 4]
    return nodes_of(gm, aten.scaled_dot_product_attention) + softmaxes


@register(Stage.CANONICALIZE)
def apply(gm, ctx, cfg) -> TransformInfo:
    windows = config_windows(ctx.hf_config)
    actx = _Context(gm, _probe_len(windows), windows)
    patterns = ATTENTION_PATTERNS
    matches = apply_patterns(gm, patterns, context=actx)
    info = TransformInfo(matches=len(matches), changed=bool(matches))
    info.details = {p.name: n for p in patterns if (n := sum(m.pattern is p for m in matches))}
    info.details["windows"] = [m.extra["sliding_window"] for m in matches]
    if matches:
        info.details["layout_rewrites"] = len(apply_patterns(gm, LAYOUT_PATTERNS))
    left = len(_leftover_attention(gm))
    layers = getattr(ctx.hf_config, "num_hidden_layers", None) if ctx.hf_config is not None else None
    why = "; ".join(f"{n} x {r}" for r, n in actx.rejected.items()) or "no spelling matched"
    if left:
        info.warning = f"{left} attention / softmax op(s) left on the HF path ({why})"
    elif layers and len(matches) != layers:
        info.warning = f"{len(matches)} attention op(s) for {layers} layers ({why})"
    return info
