"""fuse_act_into_fp8_gemv: a gated-MLP activation whose output feeds one FP8 linear (the down projection)
becomes one op with it.

    before:  (gate_up GEMM) ─ split(F, F) ─┬─ [0] gate ─┐
                                           └─ [1] up ───┴─ autodeploy.gated_mlp_act(gate, up, act) ─ h [.., F]
             h ─ autodeploy.fp8_linear(h, W8_down [N, F], s_w, b?, q) ─ y [.., N]
    after:   (gate_up GEMM) ─ split(F, F) ─┬─ [0] gate ─┐
                                           └─ [1] up ───┴─ autodeploy.gated_act_fp8_linear(gate, up, act,
                                                                                W8_down, s_w, b?, q) ─ y [.., N]

quantize_fp8 (Stage.QUANTIZE, so before this stage) makes gate / up one fp8_linear and a split, which
fuse_gated_linear leaves alone (it folds plain linears only), and fuse_norm_into_gemv (registered before
this one) folds the norm before it: every FP8 Llama MLP keeps this activation between the gate_up and
the down fp8_linear. The reference is bit-identical to the pair it replaces; the point is backend
selection, which times the Triton twin (backends/triton/gated_act_fp8_linear.py: the activation kernel
also writes per-block amaxes of its output and the GEMV quantizes x as it reads it, so a decode MLP runs
act, GEMV instead of act, quantization, GEMV: one launch of each 8B FP8 layer fewer) against the unfused
pairs and keeps the faster.

Matched: the activation's output has exactly one reader, an autodeploy.fp8_linear reading it as its input
x, whose weight is an e4m3 [N, F] get_attr parameter (F = the activation's width), its scale an fp32
get_attr, its bias None or a get_attr [N] in the activation's dtype, quantize_input a constant. gate and
up stay whatever they are (the split's views; the op reads them as they are). Weight-only FP8
(quantize_input False) folds too: the twin then runs the activation and the GEMV as before. Left alone:
an activation read twice, a down projection in bf16 or int4 / int8 (that is no fp8_linear), a weight
computed in the graph (no get_attr parameter). Without FP8 linears the graph is left as it is.
Off unless a recipe enables it (none does: the twin's earlier design measured no faster on the H200, the
current one is not yet measured; on the CPU the op is the same act + fp8_linear).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import fx

import autodeploy.transforms.fuse_norm_into_gemv  # noqa: F401  (registers first: fuse_gated_linear keeps the act)
from autodeploy.graph import is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.quantization import fp8 as fp8_q
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

ACT = torch.ops.autodeploy.gated_mlp_act.default
FP8_LINEAR = torch.ops.autodeploy.fp8_linear.default
ACT_FP8_LINEAR = torch.ops.autodeploy.gated_act_fp8_linear.default


class FuseActIntoFp8GemvConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (on in the GPU recipes; a no-op without FP8 linears).")


def _parameter(node, dtype: torch.dtype, shape_ok) -> bool:
    """A get_attr tensor of `dtype` whose shape passes `shape_ok`."""
    v = val(node)
    return (isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(v, torch.Tensor)
            and v.dtype == dtype and shape_ok(tuple(v.shape)))


def _down_projection(act: fx.Node) -> tuple[fx.Node, dict] | None:
    """(the one fp8_linear reading `act`'s output, its arguments by name) when it can be folded."""
    if len(act.users) != 1:
        return None
    proj = next(iter(act.users))
    if not is_op(proj, FP8_LINEAR):
        return None
    args = bound_args(proj)
    h = val(act)  # [.., F]
    if args["x"] is not act or not isinstance(h, torch.Tensor) or not h.dtype.is_floating_point:
        return None
    if not isinstance(args["quantize_input"], bool) or not _parameter(args["weight_scale"], torch.float32,
                                                                       lambda s: True):
        return None
    if not _parameter(args["weight"], fp8_q.DTYPE, lambda s: len(s) == 2 and s[1] == h.shape[-1]):
        return None
    n = val(args["weight"]).shape[0]
    if args["bias"] is not None and not _parameter(args["bias"], h.dtype, lambda s: s == (n,)):
        return None
    return proj, args


def _fuse(gm: fx.GraphModule, act: fx.Node, proj: fx.Node, args: dict) -> None:
    graph = gm.graph
    a = bound_args(act)
    # at the projection's place: every input (the activation's and the projection's) comes before it
    with graph.inserting_before(proj):
        fused = graph.call_function(ACT_FP8_LINEAR, (a["gate"], a["up"], a["act"], args["weight"],
                                                     args["weight_scale"], args["bias"], args["quantize_input"]))
    fused.meta["val"] = val(proj)  # [.., N]
    for key in ("nn_module_stack", "stack_trace"):
        if key in proj.meta:
            fused.meta[key] = proj.meta[key]
    proj.replace_all_uses_with(fused)
    graph.erase_node(proj)
    graph.erase_node(act)


@register(Stage.FUSE, FuseActIntoFp8GemvConfig)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    sites = [(act, *found) for act in nodes_of(gm, ACT) if (found := _down_projection(act)) is not None]
    for site in sites:
        _fuse(gm, *site)
    return TransformInfo(matches=len(sites), changed=bool(sites))
