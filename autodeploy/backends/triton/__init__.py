"""backends/triton: GPU kernels behind `torch.ops.autodeploy.triton_*` ops (importing registers them).

Each op has the exact schema of a canonical op, so backend selection (transforms/select_backends.py,
via profiler/candidates.py) swaps a node's target and keeps its arguments:

    autodeploy::rmsnorm           -> autodeploy::triton_rmsnorm               rmsnorm.py
    autodeploy::rope              -> autodeploy::triton_rope                  rope.py
    autodeploy::gated_mlp_act     -> autodeploy::triton_gated_mlp_act         gated_mlp.py
    autodeploy::position_table    -> autodeploy::triton_position_table        position_table.py
                                     (the op comes from transforms/fold_position_tables.py)
    autodeploy::cached_attention  -> autodeploy::triton_cached_attention      cached_attention.py
                                     (kv_cache_write.py + paged_attention_decode.py / _prefill.py)
    autodeploy::cached_attention_rope -> autodeploy::triton_cached_attention_rope  cached_attention_rope.py
                                     (decode: paged_attention_decode_rope.py, one launch per layer)
    autodeploy::int4_wo_linear    -> autodeploy::triton_int4_wo_linear        int4_gemm.py
                                     (rows <= 4: the FMA GEMV of int4_gemv_fma.py, <= 16: the
                                     tl.dot GEMV of int4_gemv.py; backend "triton-dot",
                                     autodeploy::triton_int4_wo_linear_dot: always the latter)
    autodeploy::int4_wo_linear_kmajor -> autodeploy::triton_int4_wo_linear_kmajor  int4_kmajor_gemm.py
                                     (rows <= 4: the K-major FMA GEMV of int4_kmajor_gemv.py; the op
                                     comes from transforms/repack_int4_kmajor.py)
    autodeploy::fp8_linear        -> autodeploy::triton_fp8_linear            fp8_gemv.py
                                     (rows <= 16; more rows: the reference, torch._scaled_mm)
    autodeploy::fused_add_rmsnorm -> autodeploy::triton_fused_add_rmsnorm     rmsnorm.py
                                     (the canonical op comes from transforms/fuse_add_rmsnorm.py)
    aten.linear (decode rows)     -> autodeploy::triton_linear                linear.py
                                     (+ max_rows: larger calls stay on cuBLAS)
    autodeploy::gated_linear      -> autodeploy::triton_gated_linear          gated_linear.py
                                     (GEMV + activation up to 16 rows; cuBLAS + activation above)
    autodeploy::add_rmsnorm_linear -> autodeploy::triton_add_rmsnorm_linear   add_rmsnorm_linear.py
    autodeploy::add_rmsnorm_gated_linear -> autodeploy::triton_add_rmsnorm_gated_linear
                                     (add + RMSNorm as the GEMV's prologue up to 16 rows; the canonical
                                     ops come from transforms/fuse_norm_into_gemv.py; the unfused pairs
                                     are registered beside them as timed candidates)
    autodeploy::add_rmsnorm_fp8_linear -> autodeploy::triton_add_rmsnorm_fp8_linear  add_rmsnorm_fp8_linear.py
                                     (up to 16 rows: add + RMSNorm + per-token e4m3 quantization in one
                                     kernel, then fp8_gemv.py's GEMV; the unfused pairs beside it)
    autodeploy::gated_act_fp8_linear -> autodeploy::triton_gated_act_fp8_linear  gated_act_fp8_linear.py
                                     (up to 16 rows: act(gate) * up + per-token e4m3 quantization in one
                                     kernel, then fp8_gemv.py's GEMV; the canonical op comes from
                                     transforms/fuse_act_into_fp8_gemv.py; the unfused pairs beside it)

and fused forms that later fusion transforms can target (no canonical op of their own yet):

    autodeploy::triton_rope_(q, k, cos, sin, interleaved)     in place on q and k
    autodeploy::triton_fused_gated_mlp_act(gate_up, act)      gate_up [..., 2f] from one fused GEMM
    autodeploy::triton_kv_cache_write(k, v, k_cache, v_cache, slot_mapping)

and one kernel behind a collective rather than an op of its own: push_all_reduce.py, the CUDA path of
autodeploy::all_reduce / all_reduce_add_rmsnorm for decode rows (distributed/symm_all_reduce.py calls it),
argmax.py, the sampler's greedy pick in one launch (runtime/sampler.argmax_rows calls it on CUDA), and
token_source.py, the decode graph's placeholder tokens in one launch (runtime/cached_model.substitute_tokens_).

`SUPPORTS[canonical name](*args of that op)` says whether the kernels take a given call (device,
dtype, sizes). Unsupported calls raise NotImplementedError naming the reason.

Kernels run compiled on CUDA, or on CPU when this package is first imported with TRITON_INTERPRET=1
(the test suite does that; see tests/backends/triton/conftest.py).
"""

from __future__ import annotations

from typing import Any, Callable

from autodeploy.backends.triton import cached_attention, gated_mlp, kv_cache_write, rmsnorm, rope  # noqa: F401
from autodeploy.backends.triton import cached_attention_rope, fp8_gemv, int4_gemm, int4_kmajor_gemm, linear  # noqa: F401
from autodeploy.backends.triton import add_rmsnorm_linear, gated_linear  # noqa: F401
from autodeploy.backends.triton import add_rmsnorm_fp8_linear, gated_act_fp8_linear, push_all_reduce  # noqa: F401
from autodeploy.backends.triton import argmax, position_table, token_source  # noqa: F401
from autodeploy.backends.triton._common import can_run_on, interpreted  # noqa: F401


# canonical ops whose Triton twin, at decode rows, launches only kernels with programmatic dependent launch (they
# overlap the kernel before them when AUTODEPLOY_PDL is on): the autotuner weighs them against library kernels
# with a margin. (Prefill rows of fp8_linear / int4_wo_linear_kmajor take other paths; there the margin is ~10% of
# a much longer time, and the candidates it compares are seldom that close.)
PDL_OPS = frozenset({"linear", "gated_linear", "rmsnorm", "fused_add_rmsnorm", "gated_mlp_act", "fp8_linear",
                     "position_table",
                     "add_rmsnorm_linear", "add_rmsnorm_gated_linear", "add_rmsnorm_fp8_linear", "gated_act_fp8_linear",
                     "int4_wo_linear_kmajor"})


def _cached_attention_supports(q, k, v, k_cache, v_cache, *meta, sinks=None, **_: Any) -> bool:
    sinks = meta[6] if len(meta) > 6 else sinks  # positional: ... slot_mapping, sinks, scale, ...
    return cached_attention.supports(q, k, v, k_cache, v_cache, sinks)


def _cached_attention_rope_supports(q, k, v, k_cache, v_cache, *meta, sinks=None, **_: Any) -> bool:
    cos, sin = meta[6], meta[7]  # positional: ... slot_mapping, cos, sin, interleaved, sinks, scale, ...
    sinks = meta[9] if len(meta) > 9 else sinks
    return cached_attention_rope.supports(q, k, v, k_cache, v_cache, cos, sin, sinks)


def _register_second_candidates() -> None:
    """Backends the autotuner times beside the "triton" one (profiler/candidates.py register_backend)."""
    import torch

    from autodeploy.profiler.candidates import register_backend

    register_backend("int4_wo_linear", "triton-dot", torch.ops.autodeploy.triton_int4_wo_linear_dot.default,
                     supports=lambda device: device.type == "cuda",  # as the "triton" entry
                     supports_args=lambda args: int4_gemm.supports(
                         args["x"], args["qweight"], args["scales"], args["zeros"], args.get("bias"),
                         args.get("group_size", 128)))


_register_second_candidates()


# {canonical op name: predicate over that op's call arguments}
SUPPORTS: dict[str, Callable[..., bool]] = {
    "rmsnorm": lambda x, weight, *a, **kw: rmsnorm.supports(x, weight),
    "fused_add_rmsnorm": lambda x, residual, weight, *a, **kw: rmsnorm.supports(x, weight, residual),
    "rope": lambda q, k, cos, sin, *a, **kw: rope.supports(q, k, cos, sin),
    "position_table": lambda table, position_ids, *a, **kw: position_table.supports(table, position_ids),
    "gated_mlp_act": lambda gate, up, act, *a, **kw: gated_mlp.supports(gate, up, act),
    "cached_attention": _cached_attention_supports,
    "cached_attention_rope": _cached_attention_rope_supports,
    "int4_wo_linear": lambda x, qweight, scales, zeros, bias=None, group_size=128, *a, **kw: int4_gemm.supports(
        x, qweight, scales, zeros, bias, group_size),
    "int4_wo_linear_kmajor": lambda x, qweight_t, scales_t, zeros_t, bias=None, group_size=128, *a, **kw:
        int4_kmajor_gemm.supports(x, qweight_t, scales_t, zeros_t, bias, group_size),
    "gated_linear": lambda x, weight, bias=None, act="silu", *a, **kw: gated_linear.supports(x, weight, bias, act),
    "fp8_linear": lambda x, weight, weight_scale, bias=None, *a, **kw: fp8_gemv.supports(x, weight, weight_scale, bias),
    "linear": lambda input, weight, bias=None, *a, **kw: linear.supports(input, weight, bias),  # aten.linear
    "add_rmsnorm_linear": lambda x, residual, norm_weight, eps, offset, weight, bias=None, *a, **kw:
        add_rmsnorm_linear.supports(x, residual, norm_weight, weight, bias),
    "add_rmsnorm_gated_linear": lambda x, residual, norm_weight, eps, offset, weight, bias=None, act="silu", *a, **kw:
        add_rmsnorm_linear.supports_gated(x, residual, norm_weight, weight, bias, act),
    "add_rmsnorm_fp8_linear": lambda x, residual, norm_weight, eps, offset, weight, weight_scale, bias=None,
        quantize_input=True, *a, **kw: add_rmsnorm_fp8_linear.supports(x, residual, norm_weight, weight, weight_scale,
                                                                       bias, quantize_input),
    "gated_act_fp8_linear": lambda gate, up, act, weight, weight_scale, bias=None, quantize_input=True, *a, **kw:
        gated_act_fp8_linear.supports(gate, up, act, weight, weight_scale, bias, quantize_input),
}
