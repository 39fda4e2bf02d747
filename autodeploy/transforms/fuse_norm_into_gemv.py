"""fuse_norm_into_gemv: a residual add + RMSNorm whose output feeds one projection becomes one op with it.

    before:  autodeploy.fused_add_rmsnorm(x, r, w_norm, eps, offset) ─┬─ [0] normed ─ aten.linear(normed, W_qkv, b?) ─ y
                                                                      └─ [1] h ─ (the layer's next residual add)
    after:   autodeploy.add_rmsnorm_linear(x, r, w_norm, eps, offset, W_qkv, b?) ─┬─ [0] ─ y
                                                                                 └─ [1] ─ h ─ (next residual add)

and the same with autodeploy.gated_linear(normed, W_gate_up, b?, act) -> autodeploy.add_rmsnorm_gated_linear.
fuse_add_rmsnorm, fuse_gemms and fuse_gated_linear (same stage, registered before this one) leave every
Llama-style layer with exactly these two sites: the input norm before the fused qkv linear, the
post-attention norm before the gate_up gated_linear. The references are bit-identical to the pair they
replace; the point is backend selection, which times the Triton twins (add + norm in the decode GEMV's
prologue: one launch of ~100 per 1B step fewer per site, 31 of the 32 norm launches) against the
unfused pair (backends/triton/add_rmsnorm_linear.py) and keeps the faster.

FP8 linears (quantize_fp8, Stage.QUANTIZE, so before this stage) fold the same way (`fp8`, on by default):

    before:  fused_add_rmsnorm(...) ─ [0] normed ─ autodeploy.fp8_linear(normed, W8 [N, K], s_w, b?, q) ─ y
    after:   autodeploy.add_rmsnorm_fp8_linear(x, r, w_norm, eps, offset, W8, s_w, b?, q) ─┬─ [0] ─ y
                                                                                        └─ [1] ─ h

quantize_fp8 fuses q / k / v and gate / up into one fp8_linear each (then a split; gate_up's halves go to
gated_mlp_act, which fuse_gated_linear leaves to plain linears), so both sites of an FP8 layer are this
fold. Its Triton twin (backends/triton/add_rmsnorm_fp8_linear.py) writes the normed row as e4m3 codes
and scales in the norm kernel: 2 launches per decode site instead of norm, quantization and GEMV (64
per 8B step fewer); the unfused pairs stay timed candidates. Matched: the weight an e4m3 [N, K]
get_attr parameter, its scale an fp32 get_attr, the bias as above, quantize_input a constant.

Matched: the normed output [0] has exactly one reader, which reads it as its input x: an aten.linear
(no kwargs) or an autodeploy.gated_linear, whose weight (and bias) are get_attr parameters in the
normed output's dtype with K = the norm's width. Left alone, on purpose:
  - the first layer's input norm: a plain autodeploy.rmsnorm of the embedding (no residual add yet);
    one site of 32 in a 1B step, and the op would have to invent a residual;
  - the final norm before the lm_head (its new residual [1] has no reader): insert_kv_cache finds the
    lm_head linear to compute prefill logits for last tokens only, and the norm is < 2% of the lm_head's
    weight read (1B: 263 MB, ~170 us);
  - other quantized projections (int4 / int8 weight-only ops; a weight computed in the graph, e.g.
    dequantized or sliced, is no get_attr parameter) and a weight whose K is not the norm's width
    (a row-parallel shard reads a slice of the normed output, so that is not its direct reader anyway);
  - a normed output read twice (separate q / k / v projections when fuse_gemms is off).
Off unless a recipe enables it (h100 and h100-fp8 do; on the CPU the op is the same norm + linear).
"""

from __future__ import annotations

import operator

import torch
from pydantic import Field
from torch import fx

import autodeploy.transforms.fuse_add_rmsnorm  # noqa: F401  (registers first: its op is matched here)
import autodeploy.transforms.fuse_all_reduce_rmsnorm  # noqa: F401  (registers first: a sharded graph's sites are its)
import autodeploy.transforms.fuse_gated_linear  # noqa: F401  (registers first, and fuse_gemms before it)
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.quantization import fp8 as fp8_q
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

NORM = torch.ops.autodeploy.fused_add_rmsnorm.default
LINEAR = aten.linear.default
GATED_LINEAR = torch.ops.autodeploy.gated_linear.default
NORM_LINEAR = torch.ops.autodeploy.add_rmsnorm_linear.default
NORM_GATED_LINEAR = torch.ops.autodeploy.add_rmsnorm_gated_linear.default
FP8_LINEAR = torch.ops.autodeploy.fp8_linear.default
NORM_FP8_LINEAR = torch.ops.autodeploy.add_rmsnorm_fp8_linear.default


class FuseNormIntoGemvConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (the h100 recipes turn it on).")
    fp8: bool = Field(True, description="Also fold the norm into FP8 linears (autodeploy.add_rmsnorm_fp8_linear).")


def _outputs(norm: fx.Node) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """(readers of [0], readers of [1]) of a fused_add_rmsnorm read only through getitem; else None."""
    picks: tuple[list, list] = ([], [])
    for user in norm.users:
        if user.target is not operator.getitem or user.args[1] not in (0, 1):
            return None
        picks[user.args[1]].append(user)
    return picks


def _parameter(node, dtype: torch.dtype, shape_ok) -> bool:
    """A get_attr tensor of `dtype` whose shape passes `shape_ok`."""
    v = val(node)
    return (isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(v, torch.Tensor)
            and v.dtype == dtype and shape_ok(tuple(v.shape)))


def _projection(normed: fx.Node, fp8: bool) -> tuple[fx.Node, dict] | None:
    """(the one reader of `normed`, its arguments by name) when it is a plain projection of it."""
    if len(normed.users) != 1:
        return None
    proj = next(iter(normed.users))
    if is_op(proj, LINEAR):
        if proj.kwargs or not 2 <= len(proj.args) <= 3:
            return None
        args = dict(x=proj.args[0], weight=proj.args[1], bias=proj.args[2] if len(proj.args) > 2 else None)
    elif is_op(proj, GATED_LINEAR) or (fp8 and is_op(proj, FP8_LINEAR)):
        args = bound_args(proj)
    else:
        return None
    nv = val(normed)
    if args["x"] is not normed or not isinstance(nv, torch.Tensor) or not nv.dtype.is_floating_point:
        return None
    k = nv.shape[-1]
    if is_op(proj, FP8_LINEAR):  # e4m3 weight; fp32 scales of any layout the op reads
        scale_ok = _parameter(args["weight_scale"], torch.float32, lambda s: True)
        if not scale_ok or not isinstance(args["quantize_input"], bool):
            return None
        weight_dtype = fp8_q.DTYPE
    else:
        weight_dtype = nv.dtype
    if not _parameter(args["weight"], weight_dtype, lambda s: len(s) == 2 and s[1] == k):
        return None
    n = val(args["weight"]).shape[0]
    if args["bias"] is not None and not _parameter(args["bias"], nv.dtype, lambda s: s == (n,)):
        return None
    return proj, args


def _sites(gm: fx.GraphModule, fp8: bool) -> list[tuple[fx.Node, fx.Node, dict, list[fx.Node]]]:
    """(norm, projection, its arguments, getitems of the norm) for every site to fuse."""
    sites = []
    for norm in nodes_of(gm, NORM):
        outs = _outputs(norm)
        if outs is None or len(outs[0]) != 1 or not isinstance(val(norm), (tuple, list)):
            continue
        normed, residuals = outs[0][0], outs[1]
        if not any(r.users for r in residuals):  # the final norm: its reader is the lm_head (see above)
            continue
        found = _projection(normed, fp8)
        if found is not None:
            sites.append((norm, *found, [normed, *residuals]))
    return sites


def _fuse(gm: fx.GraphModule, norm: fx.Node, proj: fx.Node, args: dict, getitems: list[fx.Node]) -> None:
    graph = gm.graph
    n = bound_args(norm)
    params = [p for p in (args["weight"], args.get("weight_scale"), args["bias"]) if p is not None]
    for p in params:  # get_attr nodes read nothing: moving them before the norm is always valid
        norm.prepend(p)
    norm_args = (n["x"], n["residual"], n["weight"], n["eps"], n["add_unit_offset"])
    if is_op(proj, GATED_LINEAR):
        target, proj_args = NORM_GATED_LINEAR, (args["weight"], args["bias"], args["act"])
    elif is_op(proj, FP8_LINEAR):
        target, proj_args = NORM_FP8_LINEAR, (args["weight"], args["weight_scale"], args["bias"], args["quantize_input"])
    else:
        target, proj_args = NORM_LINEAR, (args["weight"], args["bias"])
    # in the norm's place: the new residual's readers may come before the projection
    with graph.inserting_after(norm):
        fused = graph.call_function(target, norm_args + proj_args)
    with graph.inserting_after(fused):
        out = graph.call_function(operator.getitem, (fused, 0))  # [.., N] (gated: [.., N / 2])
    with graph.inserting_after(out):
        new_residual = graph.call_function(operator.getitem, (fused, 1))  # [.., K]
    fused.meta["val"] = (val(proj), val(norm)[1])
    out.meta["val"], new_residual.meta["val"] = val(proj), val(norm)[1]
    for node, source in ((fused, proj), (out, proj), (new_residual, norm)):
        for key in ("nn_module_stack", "stack_trace"):
            if key in source.meta:
                node.meta[key] = source.meta[key]
    proj.replace_all_uses_with(out)
    for item in getitems[1:]:
        item.replace_all_uses_with(new_residual)
    for node in [proj, *getitems, norm]:
        graph.erase_node(node)


@register(Stage.FUSE, FuseNormIntoGemvConfig)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    sites = _sites(gm, cfg.fp8)
    for site in sites:
        _fuse(gm, *site)
    return TransformInfo(matches=len(sites), changed=bool(sites))
