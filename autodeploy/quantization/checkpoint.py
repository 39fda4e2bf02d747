"""Pre-quantized Hugging Face checkpoints: read them into the canonical quantized ops, and write them.

    config.json  quantization_config.quant_method
        gptq        4 bits, groups (v1 zero points, no act-order)     -> autodeploy::int4_wo_linear
        awq         4 bits, GEMM packing, zero points                 -> autodeploy::int4_wo_linear
        fbgemm_fp8  per-channel e4m3, dynamic per-token activations   -> autodeploy::fp8_linear
        fp8         transformers' fine-grained e4m3 (block scales)    -> autodeploy::fp8_linear

Which layers are quantized is read from the tensor names (`<module>.qweight`, `<module>.weight_scale`
/ `weight_scale_inv`), so skip lists (modules_to_not_convert) need no special handling. The tensors
are read straight from the safetensors files (transformers would need the GPTQ / AWQ kernels
packages to load them); the map_quantized_checkpoint transform rewrites the graph and converts
each layer's tensors as it loads.

`save_quantized(source, out_dir, recipe, overrides)` runs the pipeline up to Stage.QUANTIZE with the
recipe's quantize_* transforms, loads (and so quantizes / calibrates) the weights, and writes the
result in the matching format: int4 rtn / gptq -> gptq, int4 awq -> awq (AWQ's scales already folded
into the norm weights written beside it), fp8 -> fbgemm_fp8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from autodeploy.errors import SourceError, UnsupportedModelError

READABLE = ("gptq", "awq", "fbgemm_fp8", "fp8")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def quant_config(hf_config: Any) -> dict[str, Any] | None:
    """The checkpoint's quantization_config as a dict (None when the checkpoint is not quantized)."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        return None
    return dict(qc) if isinstance(qc, dict) else qc.to_dict()


def quant_method(hf_config: Any) -> str | None:
    """gptq / awq / fbgemm_fp8 / fp8, None when not quantized; other methods raise UnsupportedModelError."""
    qc = quant_config(hf_config)
    if qc is None:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method not in READABLE:
        raise UnsupportedModelError(
            f"checkpoint quantized with '{method}': autodeploy reads {', '.join(READABLE)} checkpoints"
        )
    if method in ("gptq", "awq") and int(qc.get("bits", 4)) != 4:
        raise UnsupportedModelError(f"{method} checkpoint with {qc.get('bits')} bits: only 4-bit is supported")
    if method == "awq" and str(qc.get("version", qc.get("format", "gemm"))).lower() != "gemm":
        raise UnsupportedModelError("AWQ checkpoint not in GEMM packing: only version 'gemm' is supported")
    if method == "fp8" and str(qc.get("activation_scheme", "dynamic")).lower() != "dynamic":
        raise UnsupportedModelError("fp8 checkpoint with static activation scales: only 'dynamic' is supported")
    return method


def _files(location: str) -> list[Path]:
    files = sorted(Path(location).glob("*.safetensors"))
    if not files:
        raise SourceError(f"{location}: a quantized checkpoint needs *.safetensors files")
    return files


def tensor_shapes(location: str) -> dict[str, tuple[list[int], str]]:
    """{name: (shape, dtype string)} from the safetensors headers (no tensor data read)."""
    from safetensors import safe_open

    out = {}
    for f in _files(location):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                out[name] = (list(sl.get_shape()), sl.get_dtype())
    return out


def read_state(src, recipe, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized checkpoint on `device`; floating tensors other than quantization
    parts (scales) in the runtime dtype; tied parameters under each of their names."""
    from safetensors import safe_open

    from autodeploy.models.factory import build_meta_model, torch_dtype

    dtype = torch_dtype(recipe.runtime.dtype)
    state: dict[str, torch.Tensor] = {}
    for f in _files(src.location):
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for name in fh.keys():
                t = fh.get_tensor(name)
                leaf = name.rpartition(".")[2]
                if t.is_floating_point() and t.dtype != torch.float8_e4m3fn and leaf not in ("scales", "weight_scale", "weight_scale_inv"):
                    t = t.to(dtype)
                state[name] = t.to(device)
    # tied names (lm_head.weight = embed_tokens.weight) are stored once
    meta = build_meta_model(src, recipe)
    by_id: dict[int, list[str]] = {}
    for name, p in meta.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    for names in by_id.values():
        have = next((n for n in names if n in state), None)
        for n in names:
            if have is not None and n not in state:
                state[n] = state[have]
    return state


# ---- writing ------------------------------------------------------------------------------------

def _quantized_ops():
    import autodeploy.ops  # noqa: F401

    ops = torch.ops.autodeploy
    return {ops.int4_wo_linear.default: "int4", ops.fp8_linear.default: "fp8", ops.int8_wo_linear.default: "int8"}


def _layers(gm) -> dict[str, tuple[str, dict[str, str], dict[str, Any]]]:
    """{module name: (kind, {leaf: graph param name}, call settings)} of the quantized linears."""
    from autodeploy.models.weights import checkpoint_name
    from autodeploy.ops import bound_args

    kinds = _quantized_ops()
    out = {}
    for node in gm.graph.nodes:
        kind = kinds.get(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        args = bound_args(node)
        params = {k: v.target for k, v in args.items() if hasattr(v, "op") and v.op == "get_attr" and k not in ("x", "bias")}
        first = next(iter(params.values()))
        module = checkpoint_name(first).rpartition(".")[0]
        out[module] = (kind, {k: checkpoint_name(v) for k, v in params.items()},
                       {k: v for k, v in args.items() if not hasattr(v, "op")})
    return out


def _hf_quantization_config(kind: str, method: str, settings: dict[str, Any], skipped: list[str]) -> dict[str, Any]:
    if kind == "int4" and method == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": settings["group_size"], "zero_point": True,
                "version": "gemm", "modules_to_not_convert": skipped}
    if kind == "int4":
        return {"quant_method": "gptq", "bits": 4, "group_size": settings["group_size"], "desc_act": False,
                "sym": False, "checkpoint_format": "gptq", "true_sequential": True}
    if kind == "fp8":
        return {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": skipped}
    raise UnsupportedModelError(f"no Hugging Face checkpoint format for {kind} weights (write int4 or fp8)")


def export_state(gm, int4_method: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The graph's loaded parameters in HF names and layouts, and the quantization_config to write."""
    from autodeploy.graph import aten, is_op
    from autodeploy.models.weights import checkpoint_name
    from autodeploy.quantization import hf_formats

    layers = _layers(gm)
    if not layers:
        raise UnsupportedModelError("nothing to write: no layer of the graph is quantized (enable a quantize_* transform)")
    kinds = {k for k, _, _ in layers.values()}
    if len(kinds) > 1:
        raise UnsupportedModelError(f"a checkpoint holds one quantization format; the graph mixes {sorted(kinds)}")
    kind = kinds.pop()
    params = {checkpoint_name(n): p.detach() for n, p in gm.named_parameters(remove_duplicate=False)}
    taken: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    group_sizes = {s.get("group_size") for _, _, s in layers.values()}
    if kind == "int4" and len(group_sizes) > 1:
        raise UnsupportedModelError(f"a GPTQ / AWQ checkpoint has one group size; the graph uses {sorted(group_sizes)}")
    for module, (_, leaves, settings) in layers.items():
        p = {leaf: params[name] for leaf, name in leaves.items()}
        taken.update(leaves.values())
        if kind == "int4":
            n, k = p["qweight"].shape[0], 2 * p["qweight"].shape[1]
            why = hf_formats.check_packable(n, k)
            if why:
                raise UnsupportedModelError(f"{module}: {why}")
            conv = (hf_formats.to_awq(p["qweight"], p["scales"], p["zeros"]) if int4_method == "awq" else
                    hf_formats.to_gptq(p["qweight"], p["scales"], p["zeros"], settings["group_size"]))
        else:
            if not settings.get("quantize_input", True):
                raise UnsupportedModelError("fbgemm_fp8 checkpoints quantize activations: write fp8 with activation_scheme dynamic")
            conv = hf_formats.to_fbgemm_fp8(p["weight"], p["weight_scale"])
        state.update({f"{module}.{leaf}": t.contiguous() for leaf, t in conv.items()})
    for name, t in params.items():
        if name not in taken and name not in state:
            state[name] = t.contiguous()
    plain_linears = [checkpoint_name(n.args[1].target).rpartition(".")[0] for n in gm.graph.nodes
                     if is_op(n, aten.linear.default) and getattr(n.args[1], "op", None) == "get_attr"]
    settings = next(iter(layers.values()))[2]
    return state, _hf_quantization_config(kind, int4_method, settings, sorted(plain_linears))


def save_quantized(source: str, out_dir: str | Path, recipe: Any = "cpu", overrides: dict[str, Any] | list[str] | None = None) -> Path:
    """Quantize `source` with the recipe's quantize_* transforms and write a HF checkpoint to `out_dir`."""
    from safetensors.torch import save_file

    from autodeploy.api import export_source, prepare
    from autodeploy.models.detect import detect_architecture
    from autodeploy.models.factory import load_tokenizer, materialize_state
    from autodeploy.models.weights import load_weights
    from autodeploy.recipe import parse_override
    from autodeploy.transforms.pipeline import Stage, TransformContext, ordered_specs, run_pipeline

    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    # one quantized op per HF module: fused q/k/v parameters have no checkpoint name
    unfused = {f"transforms.{t}.fuse_shared_input": False
               for t in ("quantize_fp8", "quantize_int4_weight_only", "quantize_int8_weight_only")}
    src, rec = prepare(source, recipe, dict(overrides or {}) | unfused)
    gm = export_source(src, rec)
    ctx = TransformContext(recipe=rec, hf_config=src.config, arch=detect_architecture(src.config, gm), extra={"source": src})
    run_pipeline(gm, ctx, only=[s.name for s in ordered_specs() if s.stage <= Stage.QUANTIZE])
    device = torch.device(rec.runtime.device)
    state = materialize_state(src, rec, device)
    load_weights(gm, state, device)
    del state
    int4_cfg = rec.transform_config("quantize_int4_weight_only")
    tensors, qconfig = export_state(gm, int4_cfg.method if int4_cfg.enabled else "rtn")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(src.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # HF stores tied weights once
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = src.config.to_dict()
    config["quantization_config"] = qconfig
    config["dtype"] = rec.runtime.dtype  # the dtype the scales were made in
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if src.location and Path(src.location).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(src.location) / name).exists():
                shutil.copy(Path(src.location) / name, out / name)
    elif src.has_tokenizer:
        tok = load_tokenizer(src)
        if tok is not None:
            tok.save_pretrained(out)
    return out
