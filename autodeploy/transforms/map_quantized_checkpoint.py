"""map_quantized_checkpoint: linears stored quantized in the checkpoint -> the canonical quantized ops.

    GPTQ / AWQ (checkpoint: q_proj.qweight, .qzeros, .scales[, .g_idx]):
        before:  y = aten.linear(x, get_attr(...q_proj.weight), b)
        after:   y = autodeploy.int4_wo_linear(x, get_attr(...q_proj.qweight),   # [N, K/2] uint8
                                               get_attr(...q_proj.scales), get_attr(...q_proj.zeros), b, g)
    fbgemm_fp8 / fp8 (checkpoint: q_proj.weight e4m3, .weight_scale / .weight_scale_inv):
        after:   y = autodeploy.fp8_linear(x, get_attr(...q_proj.weight), get_attr(...q_proj.weight_scale), b, True)

Linears that read one input (q/k/v, gate/up) in the same format become one op whose parts are the
members' parts concatenated along N, then a split (as for fresh quantization; block-scaled FP8
stays per layer).

Runs whenever the source's config has a quantization_config (GPTQ, AWQ, FP8; see
autodeploy/quantization/checkpoint.py) and does nothing otherwise. A layer is taken when its
quantized tensors are in the checkpoint, so a skip list needs no handling. Each layer's tensors are
repacked into the ops' layouts as they load. On by default: a quantized checkpoint cannot load any
other way.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import fx

from autodeploy.errors import UnsupportedModelError
from autodeploy.graph import val
from autodeploy.quantization import fp8, hf_formats
from autodeploy.quantization.checkpoint import quant_config, quant_method, tensor_shapes
from autodeploy.quantization.config import Fp8Config, Int4WeightOnlyConfig
from autodeploy.quantization.rewrite import LinearSite, fusable_groups, linear_sites, quantize_fused, quantize_linear
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register


def _int4(site: LinearSite, method: str, group_size: int, names: set[str]):
    m, dtype = site.name, val(site.weight).dtype
    n, k = site.shape
    group = k if group_size in (-1, 0) else group_size
    try:
        cfg = Int4WeightOnlyConfig(group_size=group)
    except ValueError:
        raise UnsupportedModelError(f"{m}: {method} group size {group_size} (supported: 32, 64, 128)") from None
    parts = [f"{m}.qweight", f"{m}.qzeros", f"{m}.scales"]
    g_idx = f"{m}.g_idx" if f"{m}.g_idx" in names else None

    def make(fetch):
        qw, qz, sc = (fetch(p) for p in parts)
        if method == "awq":
            return hf_formats.from_awq(qw, qz, sc, dtype)
        try:
            return hf_formats.from_gptq(qw, qz, sc, fetch(g_idx) if g_idx else None, cfg.group_size, dtype)
        except ValueError as e:
            raise UnsupportedModelError(f"{m}: {e}") from None

    return cfg, make, parts + ([g_idx] if g_idx else []), None


def _fp8(site: LinearSite, method: str, shapes: dict):
    m = site.name
    n, k = site.shape
    scale_name = f"{m}.weight_scale" if method == "fbgemm_fp8" else f"{m}.weight_scale_inv"
    scale_shape = shapes[scale_name][0]
    if method == "fbgemm_fp8":
        scale_shape = [n]
    elif scale_shape and math.prod(scale_shape) == 1:
        scale_shape = []
    cfg = Fp8Config()
    spec = {"weight": ((n, k), fp8.DTYPE), "weight_scale": (tuple(scale_shape), torch.float32)}
    convert = hf_formats.from_fbgemm_fp8 if method == "fbgemm_fp8" else hf_formats.from_fine_grained_fp8

    def make(fetch):
        return convert(fetch(f"{m}.weight"), fetch(scale_name))

    return cfg, make, [f"{m}.weight", scale_name], spec


class MapQuantizedCheckpointConfig(TransformConfig):
    fuse_shared_input: bool = Field(
        True, description="Quantized linears reading one input (q/k/v, gate/up) become one GEMM and a split."
    )


@register(Stage.QUANTIZE, MapQuantizedCheckpointConfig)
def apply(gm: fx.GraphModule, ctx, cfg: MapQuantizedCheckpointConfig) -> TransformInfo:
    src = ctx.extra.get("source")
    if ctx.hf_config is None or getattr(src, "kind", None) == "random":  # random weights are never quantized
        return TransformInfo()
    method = quant_method(ctx.hf_config)
    if method is None:
        return TransformInfo()
    if src is None or src.location is None:
        return TransformInfo(warning=f"{method} checkpoint, but the transform was not given its source")
    shapes = tensor_shapes(src.location)
    names = set(shapes)
    qc = quant_config(ctx.hf_config)
    found = {}  # module name -> (site, config, make, consumes, spec)
    for site in linear_sites(gm):
        if method in ("gptq", "awq") and f"{site.name}.qweight" in names:
            found[site.name] = (site, *_int4(site, method, int(qc.get("group_size", 128)), names))
        elif method == "fbgemm_fp8" and f"{site.name}.weight_scale" in names:
            found[site.name] = (site, *_fp8(site, method, shapes))
        elif method == "fp8" and f"{site.name}.weight_scale_inv" in names:
            found[site.name] = (site, *_fp8(site, method, shapes))
    # block-scaled FP8 keeps its own scale layout per layer; the other formats fuse like fresh quantization
    fusable = [(site, c) for site, c, _, _, spec in found.values() if spec is None or method == "fbgemm_fp8"]
    groups = fusable_groups(fusable) if cfg.fuse_shared_input else []
    makes = {name: make for name, (_, _, make, _, _) in found.items()}
    consumes = {name: taken for name, (_, _, _, taken, _) in found.items()}
    grouped = set()
    for group in groups:
        quantize_fused(gm, group, makes, consumes)
        grouped.update(site.name for site, _ in group)
    for name, (site, qcfg, make, taken, spec) in found.items():
        if name not in grouped:
            quantize_linear(gm, site, qcfg, make, consumes=taken, spec=spec)
    layers = {name: method for name in found}
    warning = None if layers else f"{method} checkpoint, but no linear of the graph has quantized tensors in it"
    return TransformInfo(matches=len(layers), changed=bool(layers), warning=warning,
                         details={"method": method, "layers": layers, "gemms": len(groups) + len(found) - len(grouped)})
