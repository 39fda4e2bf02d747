"""repack_int4_kmajor: int4 linears -> autodeploy::int4_wo_linear_kmajor, weights repacked K-major as they load.

    before:  y = autodeploy.int4_wo_linear(x, get_attr(...qweight),         # [N, K/2] uint8, half-split
                                           get_attr(...scales),          # [N, K/g]
                                           get_attr(...zeros), b, g)     # [N, K/g]
    after:   y = autodeploy.int4_wo_linear_kmajor(x, get_attr(...qweight_kmajor),   # [K/8, N] int32
                                                  get_attr(...scales_kmajor),    # [K/g, N]
                                                  get_attr(...zeros_kmajor), b, g)  # [K/g, N]

Why: the batch-1 decode GEMV streams the K-major layout (autodeploy/quantization/int4_kmajor.py)
with x broadcast across a program and each thread reducing its own columns in registers
(backends/triton/int4_kmajor_gemv.py); on the canonical half-split layout each weight needs its own
x load, which kept the 8B INT4 GEMVs at ~0.73 TB/s on an H100.

Where the layout comes from: the canonical [N, K/2] form stays what every producer makes (round to
nearest, AWQ / GPTQ, pre-quantized checkpoints) and what sharding slices, so this transform runs in
Stage.FUSE, after sharding and before select_backends. It changes no tensor itself: like the quantize
transforms it rewrites the graph on meta parameters and wraps each parameter's WeightPlan rule (the
quantize-on-load producer, a checkpoint mapping, or a plain checkpoint fetch) in the repack. So at
load each layer is made in the half-split form on the target device, repacked there (a transpose of
bytes plus nibble moves) and the half-split tensors dropped before the next layer loads: the GPU
never holds both copies of more than one layer. A graph that already holds real weights (tests) is
repacked at once.

Then select_backends treats int4_wo_linear_kmajor like any canonical op: the autotuner times its
Triton twin (GEMV up to 4 rows, tl.dot GEMM above) against the torch reference (dequantize +
cuBLAS) per token bucket, so prefill can still pick cuBLAS. The layout itself is the recipe's choice
(recipes/h100-int4.yaml enables this transform); the half-split kernels remain for recipes without it.

By default only where the Triton kernels run: device cuda with select_backends' triton on
(require_triton: false repacks anywhere; the reference op runs the layout on CPU, bit-identical to
int4_wo_linear). Sites whose parameters are shared with other nodes, or whose group size the kernels
do not take (a power of two >= 16), keep the canonical op.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from torch import fx, nn

from autodeploy.graph import is_op, replace_with_call, val
from autodeploy.models.weights import weight_plan
from autodeploy.ops import bound_args
from autodeploy.quantization import int4, int4_kmajor
from autodeploy.quantization.rewrite import weight_source
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

INT4 = torch.ops.autodeploy.int4_wo_linear.default
INT4_KMAJOR = torch.ops.autodeploy.int4_wo_linear_kmajor.default
SUFFIX = "_kmajor"


class RepackInt4KmajorConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (recipes/h100-int4.yaml turns it on).")
    require_triton: bool = Field(
        True, description="Repack only when the Triton kernels will run it (device cuda, select_backends.triton on)."
    )


def _skip_reason(ctx, cfg: RepackInt4KmajorConfig) -> str | None:
    if not cfg.require_triton:
        return None
    if torch.device(ctx.recipe.runtime.device).type != "cuda":
        return f"device {ctx.recipe.runtime.device}: the K-major kernels are Triton (CUDA)"
    select = ctx.recipe.transform_config("select_backends")
    if not (select.enabled and select.triton):
        return "select_backends does not consider Triton backends"
    return None


def _site_problem(gm: fx.GraphModule, node: fx.Node, args: dict[str, Any], counts: dict[str, int]) -> str | None:
    for name in ("qweight", "scales", "zeros"):
        p = args[name]
        if not isinstance(p, fx.Node) or p.op != "get_attr" or len(p.users) != 1 or counts[p.target] != 1:
            return f"{name} is not a parameter of this node alone"
        if not isinstance(val(p), torch.Tensor):
            return f"{name} has no fake value"
    n, half_k = val(args["qweight"]).shape
    g = args["group_size"]
    if g < 16 or g & (g - 1):
        return f"group size {g} is not a power of two >= 16"
    return int4_kmajor.check_shape(int(n), 2 * int(half_k), g)


def _swap_param(gm: fx.GraphModule, old: fx.Node, shape: tuple[int, ...], dtype: torch.dtype,
                convert: Callable[[torch.Tensor], torch.Tensor], before: fx.Node) -> fx.Node:
    """Replace parameter `old.target` by `<target>_kmajor` = convert(old), at load (a wrapped WeightPlan
    rule) or now when the graph holds real weights; returns its get_attr node, inserted before `before`."""
    source, consumes = weight_source(gm, old.target)  # takes the old rule out of the plan
    owner_name, _, leaf = old.target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    current = owner._parameters.pop(leaf)
    tensor = torch.empty(shape, dtype=dtype, device="meta") if current.is_meta else convert(current.detach())
    owner.register_parameter(leaf + SUFFIX, nn.Parameter(tensor, requires_grad=False))
    target = old.target + SUFFIX
    weight_plan(gm).set(target, lambda fetch: convert(source(fetch)), consumes=consumes)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(target)
    fake_mode = getattr(val(old), "fake_mode", None)
    if fake_mode is not None:
        node.meta["val"] = fake_mode.from_tensor(tensor, static_shapes=True)
    return node


def _repack(gm: fx.GraphModule, node: fx.Node, args: dict[str, Any]) -> None:
    qw, s, z, g = args["qweight"], args["scales"], args["zeros"], args["group_size"]
    n, half_k = (int(d) for d in val(qw).shape)
    k = 2 * half_k
    groups = (k // g, n)
    words = _swap_param(gm, qw, (k // 8, n), torch.int32, lambda t: int4_kmajor.pack(int4.unpack(t), g), node)
    s_t = _swap_param(gm, s, groups, val(s).dtype, lambda t: t.t().contiguous(), node)
    z_t = _swap_param(gm, z, groups, val(z).dtype, lambda t: t.t().contiguous(), node)
    replace_with_call(node, INT4_KMAJOR, (args["x"], words, s_t, z_t, args["bias"], g), erase=(qw, s, z))


@register(Stage.FUSE, RepackInt4KmajorConfig)
def apply(gm: fx.GraphModule, ctx, cfg: RepackInt4KmajorConfig) -> TransformInfo:
    why = _skip_reason(ctx, cfg)
    if why:
        return TransformInfo(warning=f"nothing repacked: {why}")
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            counts[n.target] = counts.get(n.target, 0) + 1
    repacked, kept = 0, {}
    for node in [n for n in gm.graph.nodes if is_op(n, INT4)]:
        args = bound_args(node)
        problem = _site_problem(gm, node, args, counts)
        if problem:
            kept[node.name] = problem
            continue
        _repack(gm, node, args)
        repacked += 1
    return TransformInfo(matches=repacked, changed=repacked > 0, details={"kept": kept})
