"""select_backends: swap each canonical op for the backend the autotuner picked for its shapes.

    before:  x ─ autodeploy.rmsnorm(x, w, eps) ─ y              (torch reference)
    after:   x ─ autodeploy.triton_rmsnorm(x, w, eps) ─ y       (same schema, same arguments)
         or  x ─ autodeploy.rmsnorm_tuned(x, w, eps) ─ y        (buckets disagree: chosen per call)

Per op and call signature, the candidates (Triton where present on CUDA, registered extras, the
torch reference, the reference under torch.compile) are timed on random inputs at a few token
counts: decode batches (b = 1 and the largest CUDA-graph bucket, s = 1) and one prefill (b = 1,
s = prefill_tokens). When every bucket picks the same backend the node calls it directly; else
it calls `<op>_tuned`, which dispatches per call to the nearest bucket's choice. Choices persist
(see profiler/autotuner.py). Ops that later stages rewrite (attention -> insert_kv_cache) stay.

aten.linear with a get_attr weight is timed at decode sizes only (rows = min(b, 16) for the decode
buckets): a GEMV kernel can beat cuBLAS there, never at prefill. Where it wins from b = 1 on:

    before:  y = aten.linear(x, get_attr(w), b)
    after:   y = autodeploy.triton_linear(x, get_attr(w), b, max_rows)    rows <= max_rows: the kernel
                                                                          more rows: aten.linear (cuBLAS)

max_rows follows the same nearest-bucket rule as `<op>_tuned` and never exceeds the kernel's 16
rows. Decisions are per weight shape (a site's [N, K]), not per K alone as for canonical ops.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from pydantic import Field
from torch import fx
from torch._ops import OpOverload

from autodeploy.ops import bound_args
from autodeploy.profiler.autotuner import Autotuner, Candidate
from autodeploy.profiler.candidates import LINEAR, LINEAR_DECODE_ROWS, backends_for, linear_backends
from autodeploy.profiler.variants import op_name, reference_fn, signature, tuned_variant
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

log = logging.getLogger(__name__)


class SelectBackendsConfig(TransformConfig):
    autotune: bool = Field(True, description="Time the candidates; false (--no-autotune): first supported one wins.")
    triton: bool = Field(True, description="Consider Triton backends (CUDA only).")
    compiled: bool | None = Field(
        None, description="Consider the torch reference under torch.compile; null: on CUDA, for ops without a Triton kernel."
    )
    skip_ops: list[str] = Field(["attention"], description="Canonical ops left alone (later stages rewrite them).")
    no_compile_ops: list[str] = Field(
        ["moe"], description="Ops whose reference syncs with the host (MoE expert counts): no torch.compile candidate."
    )
    prefill_tokens: int = Field(1024, ge=1, description="Token count of the prefill bucket timed.")


def _is_canonical(node: fx.Node) -> bool:
    if node.op != "call_function" or not isinstance(node.target, OpOverload):
        return False
    if node.target.namespace != "autodeploy":
        return False
    fn = reference_fn(node.target)
    return fn is not None and fn.__module__.startswith("autodeploy.backends.torch")


def _token_symbols(gm: fx.GraphModule) -> tuple[Any, Any]:
    """The sympy symbols of the batch and sequence dims of the first input (input_ids [b, s])."""
    first = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    v = first.meta.get("val") if first is not None else None
    if not isinstance(v, torch.Tensor) or v.dim() < 2:
        return None, None
    syms = [d.node.expr if isinstance(d, torch.SymInt) else None for d in v.shape]
    return syms[0], syms[1]


def _concrete(dim, subs: dict) -> int:
    if not isinstance(dim, torch.SymInt):
        return int(dim)
    expr = dim.node.expr
    shape_env = dim.node.shape_env  # backed_var_to_val: torch >= 2.11's name (var_to_val warns there)
    env = getattr(shape_env, "backed_var_to_val", None)
    if env is None:
        env = getattr(shape_env, "var_to_val", {})
    values = {s: subs.get(s, env.get(s, 1)) for s in expr.free_symbols}
    return int(expr.xreplace(values))


def _example(v: torch.Tensor, subs: dict, device: torch.device) -> torch.Tensor:
    shape = [_concrete(d, subs) for d in v.shape]
    if v.dtype.is_floating_point:  # float8 has no normal kernel: draw in fp32, then cast
        return torch.randn(shape, dtype=torch.float32, device=device).to(v.dtype)
    if v.dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return torch.zeros(shape, dtype=v.dtype, device=device)


def _materialize(value: Any, subs: dict, device: torch.device) -> Any:
    if isinstance(value, fx.Node):
        v = value.meta.get("val")
        if isinstance(v, torch.Tensor):
            return _example(v, subs, device)
        return _concrete(v, subs) if isinstance(v, torch.SymInt) else v
    if isinstance(value, (list, tuple)):
        return type(value)(_materialize(x, subs, device) for x in value)
    return value


def _bucket_key(names: list[str], args: list[Any]) -> str:
    parts = []
    for n, a in zip(names, args):
        if isinstance(a, torch.Tensor):
            parts.append(f"{n}=[{','.join(map(str, a.shape))}]:{str(a.dtype).removeprefix('torch.')}")
    return " ".join(parts)


def _token_buckets(ctx, cfg: SelectBackendsConfig) -> list[tuple[int, int]]:
    """(b, s) pairs timed: decode at b = 1 and the largest CUDA-graph bucket, then one prefill."""
    rt = ctx.recipe.runtime
    graph_sizes = [s for s in rt.cuda_graph_batch_sizes if s <= rt.max_batch_size] or [1]
    decode = sorted({1, max(graph_sizes)})
    return [(b, 1) for b in decode] + [(1, min(cfg.prefill_tokens, rt.max_num_tokens))]


@register(Stage.FUSE, SelectBackendsConfig)
def apply(gm, ctx, cfg: SelectBackendsConfig) -> TransformInfo:
    device = torch.device(ctx.recipe.runtime.device)
    runnable = device.type != "cuda" or torch.cuda.is_available()
    tuner: Autotuner = ctx.extra.get("autotuner") or Autotuner(enabled=cfg.autotune and runnable, device=device)
    compiled = cfg.compiled if cfg.compiled is not None else (None if device.type == "cuda" else False)
    b_sym, s_sym = _token_symbols(gm)
    buckets = _token_buckets(ctx, cfg) if s_sym is not None else [(None, None)]

    choices: dict[str, dict[str, str]] = {}
    decided: dict[tuple, OpOverload] = {}  # (op, signature) -> target
    swapped = 0
    linear_rows = sorted({min(b, LINEAR_DECODE_ROWS) for b, s in buckets if s == 1}) or [None]
    for node in list(gm.graph.nodes):
        if _is_weight_linear(node):
            try:
                swapped += _select_linear(node, device, cfg, tuner, linear_rows, (b_sym, s_sym), choices, decided)
            except Exception as e:  # tuning is an optimization: a site it cannot judge keeps cuBLAS
                log.warning("select_backends: %s stays on aten.linear (%s: %s)", node.name, type(e).__name__, e)
            continue
        if not _is_canonical(node) or op_name(node.target) in cfg.skip_ops:
            continue
        name = op_name(node.target)
        backends = backends_for(node.target, device, triton=cfg.triton,
                                compiled=False if name in cfg.no_compile_ops else compiled)
        if len(backends) == 1:
            continue
        bound = bound_args(node)
        names = list(bound)
        vals = [v.meta.get("val") if isinstance(v, fx.Node) else v for v in bound.values()]
        # sites whose tensors after the first are all parameters are decided per weight shape: qkv,
        # o and gate_up share K but not N, and a GEMV can win on one and lose on another (the 8B INT4
        # run kept one K=4096 decision for all three)
        key = (node.target, signature(tuple(vals)) + _param_shapes(bound))
        if key not in decided:
            by_name = {b.name: b.op for b in backends}
            table: list[tuple[int, OpOverload]] = []
            for b, s in buckets:
                subs = {k: v for k, v in ((b_sym, b), (s_sym, s)) if k is not None}
                example = tuple(_materialize(v, subs, device) for v in bound.values())
                runnable_here = [bk for bk in backends if bk.can_run(dict(zip(names, example)))]
                bucket = _bucket_key(names, list(example))
                cands = [Candidate(bk.name, bk.op, bk.pdl) for bk in runnable_here]
                pick = tuner.choose(op_name(node.target), bucket, cands, lambda example=example: example, save=False)
                choices.setdefault(op_name(node.target), {})[bucket] = pick
                first = next(a for a in example if isinstance(a, torch.Tensor))
                table.append((first.numel() // max(1, first.shape[-1]) if first.dim() else 1, by_name[pick]))
            targets = {t for _, t in table}
            if len(targets) == 1:
                decided[key] = table[0][1]
            else:
                decided[key] = tuned_variant(node.target, key[1], table)
        target = decided[key]
        if target is not node.target:
            node.target = target
            swapped += 1
    tuner.save()
    return TransformInfo(
        matches=swapped,
        changed=swapped > 0,
        details={"choices": choices, "autotune": tuner.enabled, "cache_hits": tuner.hits, "tuned": tuner.tuned},
    )


def _param_shapes(bound: dict) -> tuple:
    """weight_shapes() of a site whose tensor arguments after the first are get_attr parameters; else ()."""
    tensors = [v for v in bound.values() if isinstance(v, fx.Node) and isinstance(v.meta.get("val"), torch.Tensor)]
    rest = tensors[1:]
    if not rest or any(t.op != "get_attr" for t in rest):
        return ()
    shapes = tuple(tuple(t.meta["val"].shape) for t in rest)
    if any(isinstance(d, torch.SymInt) for shape in shapes for d in shape):
        return ()
    return tuple(tuple(int(d) for d in shape) for shape in shapes)


def _is_weight_linear(node: fx.Node) -> bool:
    """aten.linear(x, get_attr weight [N, K], bias?): a model projection."""
    if node.op != "call_function" or node.target is not LINEAR or node.kwargs or len(node.args) < 2:
        return False
    w = node.args[1]
    return isinstance(w, fx.Node) and w.op == "get_attr" and getattr(w.meta.get("val"), "dim", lambda: 0)() == 2


def _decode_rows_limit(picks: list[tuple[int, str]]) -> tuple[str, int] | None:
    """(backend, max_rows) from the picks per timed row count, or None when cuBLAS wins at the fewest rows.

    The backend that won the fewest rows keeps every call up to the last bucket of its winning run,
    and on to the log-midpoint before the next bucket (the nearest-bucket rule of `<op>_tuned`)."""
    picks = sorted(picks)
    name = picks[0][1]
    if name == "torch":
        return None
    lost = next((i for i, (_, p) in enumerate(picks) if p != name), None)
    if lost is None:
        return name, LINEAR_DECODE_ROWS
    return name, int(math.isqrt(picks[lost - 1][0] * picks[lost][0]))


def _select_linear(node: fx.Node, device: torch.device, cfg: SelectBackendsConfig, tuner: Autotuner,
                   rows: list[int | None], syms: tuple[Any, Any], choices: dict, decided: dict) -> bool:
    """Time aten.linear's decode backends at each row count; swap in the winner with its max_rows."""
    backends = linear_backends(device, triton=cfg.triton)
    if len(backends) == 1:
        return False
    bound = bound_args(node)
    names = list(bound)
    vals = [v.meta.get("val") if isinstance(v, fx.Node) else v for v in bound.values()]
    # the weight's [N, K]; str(): a dim that is a SymInt (e.g. a weight the graph slices) is not hashable
    key = (LINEAR, signature(tuple(vals)) + (tuple(str(d) for d in vals[1].shape),))
    if key not in decided:
        by_name = {b.name: b.op for b in backends}
        b_sym, s_sym = syms
        picks = []
        for r in rows:  # x [b, s, K] at (b, s) = (r, 1); None: the export's own sizes
            subs = {k: v for k, v in ((b_sym, r), (s_sym, 1)) if k is not None and r is not None}
            example = tuple(_materialize(v, subs, device) for v in bound.values())
            cands = [Candidate(bk.name, bk.op, bk.pdl) for bk in backends if bk.can_run(dict(zip(names, example)))]
            bucket = _bucket_key(names, list(example))
            pick = tuner.choose("linear", bucket, cands, lambda example=example: example, save=False)
            choices.setdefault("linear", {})[bucket] = pick
            picks.append((example[0].numel() // max(1, example[0].shape[-1]), pick))
        limit = _decode_rows_limit(picks)
        decided[key] = None if limit is None else (by_name[limit[0]], limit[1])
    if decided[key] is None:
        return False
    op, max_rows = decided[key]
    node.target = op
    node.args = (bound["input"], bound["weight"], bound["bias"], max_rows)
    return True


# ops of Stage.CACHE: insert_kv_cache's, and fuse_rope_cached_attention's in its place
CACHE_OPS = ("cached_attention", "cached_attention_rope")


def select_cache_op_backends(gm: fx.GraphModule, device: torch.device | str) -> int:
    """Swap the ops of Stage.CACHE (CACHE_OPS: autodeploy::cached_attention and its RoPE-fused form)
    for their Triton twins on CUDA.

    They exist only after Stage.CACHE, so the FUSE-stage transform never sees them; the compile
    backend calls this before compiling. The reference syncs with the host (a per-sequence loop),
    which CUDA graphs cannot capture; the kernel takes the step's metadata as device tensors.
    Not timed: the kernel reads each sequence's pages once, the reference gathers them. Returns
    the count of swapped nodes.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    swapped = 0
    for node in list(gm.graph.nodes):
        if not _is_canonical(node) or op_name(node.target) not in CACHE_OPS:
            continue
        triton = next((b for b in backends_for(node.target, device) if b.name == "triton"), None)
        if triton is None:
            continue
        bound = bound_args(node)
        example = {n: _materialize(v, {}, device) for n, v in bound.items()}  # hinted sizes
        if triton.can_run(example):
            node.target = triton.op
            swapped += 1
        else:
            log.warning("cached attention at %s stays on the torch reference (the Triton kernel does not take it)",
                        node.name)
    if swapped:
        gm.recompile()
    return swapped
