"""Compile the project's Triton kernels for sm_90 without a GPU: catches compile errors before a device call.

    PYTHONPATH=$PWD python -m tests.helpers.triton_aot          # with whatever triton is importable
    PYTHONPATH=/tmp/t36:$PWD python -m tests.helpers.triton_aot # e.g. the GPU image's triton 3.6:
                                                                # pip install --no-deps --target /tmp/t36 triton==3.6.0

tests/backends/test_triton_compile_sm90.py runs the same cases in CI with the installed triton.

The interpreter (TRITON_INTERPRET=1, what CI runs) executes kernels as Python and misses what only
the compiler rejects: non-constexpr globals, branches returning different shapes, dtype mismatches.
Each case names a kernel, its pointer dtypes and its constexprs; other arguments are i32 scalars
(fp32 where named); then its stages and, optionally, its warps (default 4). Prints one line per case and exits non-zero if any failed.
"""

from __future__ import annotations

import inspect
import sys
import traceback

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


SM90_SHARED_BYTES = 232448  # per block on the H100 / H200 (the limit OutOfResources reports)


def _signature(kernel, ptrs: dict, consts: dict, floats: tuple) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = f"*{ptrs[name]}"
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_case(kernel, ptrs: dict, consts: dict, floats=(), warps=4, stages=3, cc=90):
    # constexpr parameters with defaults (PDL, PF_LINES, ...) take them, as a launch that omits them does
    consts = {**{p.name: p.default for p in kernel.params
                 if p.is_constexpr and p.default is not inspect.Parameter.empty}, **consts}
    src = ASTSource(fn=kernel, signature=_signature(kernel, ptrs, consts, floats), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=warps, num_stages=stages))


def cases():
    from autodeploy.backends.triton import fp8_gemv, gated_linear, int4_gemv, int4_gemv_fma, int4_kmajor_gemm, linear
    from autodeploy.backends.triton import int4_kmajor_gemv, int4_kmajor_gemv_bf16x2

    bf = "bf16"
    lin = dict(x_ptr=bf, w_ptr=bf, bias_ptr=bf, out_ptr=bf, part_ptr="fp32", ticket_ptr="i32", peers_ptr="i64",
               counter_ptr="i32", res_ptr=bf, norm_w_ptr=bf, res_out_ptr=bf)
    for bn, bk, st in ((16, 256, 4), (32, 128, 5), (64, 256, 3)):
        for partial in (False, True):
            c = dict(BM=16, BN=bn, BK=bk, KIND=2, PARTIAL=partial, HAS_BIAS=False, PRECISION="tf32",
                     NORM=False, UNIT_OFFSET=False)
            yield f"linear bn={bn} bk={bk} partial={partial}", linear._linear_kernel, lin, c, ("eps",), st
    # a row-parallel shard pushing its output tiles to the peer (linear_all_reduce_add_rmsnorm), split and not
    for partial in (False, True):
        c = dict(BM=16, BN=64, BK=256, KIND=2, PARTIAL=partial, HAS_BIAS=False, PRECISION="tf32", NORM=False,
                 UNIT_OFFSET=False, PUSH=True, RANK=1, W=2, MAX_ROWS=32, ROW_BYTES=32768, BITS=16)
        yield f"linear push partial={partial}", linear._linear_kernel, lin, c, ("eps",), 4
    # the add + RMSNorm prologue (add_rmsnorm_linear.py) at the configs of 1B qkv (32, 128) and a split K
    for bn, bk, st, partial, offset, bias in ((32, 128, 5, False, False, True), (16, 256, 4, True, True, False)):
        c = dict(BM=16, BN=bn, BK=bk, KIND=2, PARTIAL=partial, HAS_BIAS=bias, PRECISION="tf32",
                 NORM=True, UNIT_OFFSET=offset)
        yield (f"linear+norm bn={bn} bk={bk} partial={partial} offset={offset}", linear._linear_kernel, lin, c,
               ("eps",), st)
    c = dict(BM=16, BN=32, BK=128, KIND=1, PARTIAL=False, HAS_BIAS=False, PRECISION="tf32", NORM=True, UNIT_OFFSET=False)
    yield "linear+norm kind=dot", linear._linear_kernel, lin, c, ("eps",), 3
    yield "linear+norm kind=fma rows=1", linear._linear_kernel, lin, dict(c, BM=1, KIND=0), ("eps",), 3
    g = dict(x_ptr=bf, w_ptr=bf, bias_ptr=bf, out_ptr=bf, res_ptr=bf, norm_w_ptr=bf, res_out_ptr=bf)
    for bn, norm in ((16, False), (32, False), (32, True)):
        c = dict(BM=16, BN=bn, BK=256, KIND=2, ACT=0, PARTIAL=False, HAS_BIAS=False, PRECISION="tf32",
                 NORM=norm, UNIT_OFFSET=False)
        yield f"gated_linear bn={bn} norm={norm}", gated_linear._gated_linear_kernel, g, c, ("eps",), 3
    f8 = dict(x_ptr=bf, xs_ptr="fp32", w_ptr="fp8e4nv", ws_ptr="fp32", bias_ptr=bf, out_ptr=bf, part_ptr="fp32",
              ticket_ptr="i32")
    for mode in (0, 1, 2):
        for fp8_dot in (True, False):
            xp = dict(f8, x_ptr="fp8e4nv") if mode == 2 else f8
            c = dict(BM=16, BN=32, BK=256, AMAX_BLOCK=4096, X_MODE=mode, FP8_DOT=fp8_dot, PER_TENSOR=False,
                     PARTIAL=False, HAS_BIAS=False, EXACT=False, PRECISION="tf32")
            yield f"fp8_gemv mode={mode} fp8_dot={fp8_dot}", fp8_gemv._fp8_gemv_kernel, xp, c, (), 3
    # split K merged in the launch (tickets), at the default of 8B down / o: BN 64, BK 256, 4 stages
    c = dict(BM=16, BN=64, BK=256, AMAX_BLOCK=4096, X_MODE=2, FP8_DOT=True, PER_TENSOR=False, PARTIAL=True,
             HAS_BIAS=True, EXACT=False, PRECISION="tf32")
    yield "fp8_gemv split merged", fp8_gemv._fp8_gemv_kernel, dict(f8, x_ptr="fp8e4nv"), c, (), 4
    # X_MODE 3 (launch_block_scaled): bf16 / fp32 x quantized in the loop, the scales from 8B down's 14 block
    # amaxes a row; unsplit at BK 512 and split merged at BK 256 (the fp32 x tile is 4x the e4m3 bytes)
    for xd, bk, st, partial in ((bf, 512, 3, False), (bf, 256, 4, True), ("fp32", 256, 4, True)):
        c = dict(BM=16, BN=64, BK=bk, AMAX_BLOCK=16, NB=14, X_MODE=3, FP8_DOT=True, PER_TENSOR=False,
                 PARTIAL=partial, HAS_BIAS=partial, EXACT=False, PRECISION="tf32")
        yield (f"fp8_gemv mode=3 {xd} bk={bk} partial={partial}", fp8_gemv._fp8_gemv_kernel,
               dict(f8, x_ptr=xd, bias_ptr=xd, out_ptr=xd), c, (), st)
    from autodeploy.backends.triton import argmax

    yield "argmax (8B vocab: 63 chunks)", argmax._argmax_kernel, dict(x_ptr="fp32", out_ptr="i64", part_max_ptr="fp32",
        part_idx_ptr="i32", part_nan_ptr="i32", ticket_ptr="i32"), \
        dict(CHUNKS=63, BLOCK=argmax.BLOCK, BLOCK_C=64, NO_INDEX=argmax.NO_INDEX), (), 1
    from autodeploy.backends.triton import token_source

    yield "token_source", token_source._token_source_kernel, dict(ids_ptr="i64", prev_ptr="i64", source_ptr="i64"), \
        dict(BLOCK=token_source.BLOCK), (), 1
    from autodeploy.backends.triton import position_table

    # RoPE's cos / sin of an 8B (2 tables, d_rot 128) with PDL, as the decode graph launches it
    yield "position_table", position_table._position_table_kernel, dict(table_ptr=bf, pos_ptr="i64", out_ptr=bf), \
        dict(N=2, R=128, BLOCK_T=position_table.BLOCK_T, BLOCK_R=128, PDL=True), (), 1
    yield "fp8 quantize_rows", fp8_gemv._quantize_rows_kernel, dict(x_ptr=bf, xq_ptr="fp8e4nv", xs_ptr="fp32"), \
        dict(BLOCK=4096, EXACT=False), (), 1
    # add + RMSNorm + e4m3 quantization (add_rmsnorm_fp8_linear.py) at 8B's K = 4096 (8 warps, as the norm
    # kernel) and a 1B's 2048; its GEMV is the X_MODE=2 case above
    from autodeploy.backends.triton import add_rmsnorm_fp8_linear

    for act, block, warps, offset in ((bf, 4096, 8, False), (bf, 2048, 4, True), ("fp16", 4096, 8, False)):
        ptrs = dict(x_ptr=act, res_ptr=act, norm_w_ptr=act, res_out_ptr=act, xq_ptr="fp8e4nv", xs_ptr="fp32")
        yield (f"add_rmsnorm_quantize {act} K={block} offset={offset}", add_rmsnorm_fp8_linear._add_rmsnorm_quantize_kernel,
               ptrs, dict(UNIT_OFFSET=offset, BLOCK_K=block, EXACT=False), ("eps",), 1, warps)
    # gated activation + per-block amaxes (gated_act_fp8_linear.py), 1024 columns a program; its GEMV is X_MODE=3
    from autodeploy.backends.triton import gated_act_fp8_linear

    for act, code in ((bf, 0), (bf, 1), ("fp16", 2), ("fp32", 0)):
        ptrs = dict(gate_ptr=act, up_ptr=act, out_ptr=act, amax_ptr="fp32")
        yield (f"gated_act_amax {act} act={code}", gated_act_fp8_linear._gated_act_amax_kernel,
               ptrs, dict(ACT=code, BLOCK=1024), (), 1)
    i4 = dict(x_ptr=bf, qw_ptr="u8", s_ptr=bf, z_ptr=bf, bias_ptr=bf, out_ptr=bf)
    for bn in (16, 32, 64):
        c = dict(GROUP=128, BM=16, BN=bn, BK=256, MAGIC_BITS=True, MAGIC_VALUE=128.0, PARTIAL=False,
                 HAS_BIAS=False, PRECISION="tf32")
        yield f"int4_gemv bn={bn}", int4_gemv._int4_gemv_kernel, i4, c, (), 3
    for bn, ng, gw, xp, partial in ((8, 1, 32, True, False), (16, 2, 32, False, False), (64, 1, 32, True, True),
                                    (16, 4, 8, True, False)):
        c = dict(LOG2_GROUP=(4 * gw).bit_length() - 1, BN=bn, NG=ng, GW=gw, X_PLANES=xp, PARTIAL=partial, HAS_BIAS=not partial)
        ptrs = dict(i4, xp_ptr="fp32" if xp else bf, qw_ptr="i32", out_ptr="fp32" if partial else bf)
        yield f"int4_gemv_fma bn={bn} ng={ng} gw={gw}", int4_gemv_fma._int4_gemv_fma_kernel, ptrs, c, (), 4
    # the K-major GEMV (rows 1..4, split K merged by tickets) and GEMM
    km = dict(x_ptr=bf, qw_ptr="i32", s_ptr=bf, z_ptr=bf, bias_ptr=bf, out_ptr=bf, part_ptr="fp32", ticket_ptr="i32")
    for rows, gw, bn, bw, split, bias in ((1, 16, 256, 8, 16, False), (1, 16, 512, 4, 1, True), (4, 4, 256, 4, 3, True),
                                          (2, 8, 128, 2, 1, False)):
        c = dict(ROWS=rows, GW=gw, BN=bn, BW=bw, SPLIT=split, HAS_BIAS=bias)
        yield f"int4_kmajor_gemv rows={rows} gw={gw} bn={bn} bw={bw} split={split}", \
            int4_kmajor_gemv._int4_kmajor_gemv_kernel, km, c, (), 1
        # its bf16x2 twin (inline PTX: only the compiler checks it on a CPU machine)
        yield f"int4_kmajor_gemv_bf16x2 rows={rows} gw={gw} bn={bn} bw={bw} split={split}", \
            int4_kmajor_gemv_bf16x2._int4_kmajor_gemv_bf16x2_kernel, km, c, (), 1
    for bm, bn, bw, gw in ((16, 64, 16, 16), (64, 128, 8, 16), (32, 64, 4, 4)):
        c = dict(GW=gw, BM=bm, BN=bn, BW=bw, HAS_BIAS=True, PRECISION="tf32")
        yield f"int4_kmajor_gemm bm={bm} bn={bn} bw={bw} gw={gw}", int4_kmajor_gemm._int4_kmajor_gemm_kernel, \
            km, c, (), 3


def pdl_cases():
    """Kernels with programmatic dependent launch (griddepcontrol) compiled in, as AUTODEPLOY_PDL=1 runs
    them, and the paged decode attention whose key loop they share."""
    from autodeploy.backends.triton import gated_mlp, paged_attention_decode_rope, rmsnorm

    bf = "bf16"
    yield "gated_act pdl", gated_mlp._gated_act_kernel, dict(gate_ptr=bf, up_ptr=bf, out_ptr=bf), \
        dict(ACT=0, BLOCK=1024, PDL=True), (), 1
    from autodeploy.backends.triton import int4_kmajor_gemv, int4_kmajor_gemv_bf16x2

    km = dict(x_ptr=bf, qw_ptr="i32", s_ptr=bf, z_ptr=bf, bias_ptr=bf, out_ptr=bf, part_ptr="fp32", ticket_ptr="i32")
    yield "int4_kmajor_gemv pdl", int4_kmajor_gemv._int4_kmajor_gemv_kernel, km, \
        dict(ROWS=1, GW=16, BN=256, BW=8, SPLIT=16, HAS_BIAS=False, PDL=True), (), 1
    yield "int4_kmajor_gemv pdl prefetch", int4_kmajor_gemv._int4_kmajor_gemv_kernel, km, \
        dict(ROWS=1, GW=16, BN=256, BW=8, SPLIT=16, HAS_BIAS=False, PDL=True, PREFETCH=True), (), 1
    yield "int4_kmajor_gemv_bf16x2 pdl prefetch", int4_kmajor_gemv_bf16x2._int4_kmajor_gemv_bf16x2_kernel, km, \
        dict(ROWS=1, GW=16, BN=256, BW=8, SPLIT=16, HAS_BIAS=False, PDL=True, PREFETCH=True), (), 1
    bf16x2 = int4_kmajor_gemv_bf16x2._int4_kmajor_gemv_bf16x2_kernel
    one = dict(ROWS=1, GW=16, BN=256, BW=16, SPLIT=32, HAS_BIAS=False, PDL=True, PREFETCH=True, ONE_GROUP=True)
    yield "int4_kmajor_gemv_bf16x2 pdl prefetch one group", bf16x2, km, one, (), 1
    evict = dict(ROWS=2, GW=16, BN=256, BW=8, SPLIT=16, HAS_BIAS=False, PDL=True, PREFETCH=True, W_EVICT="evict_first")
    yield "int4_kmajor_gemv_bf16x2 pdl prefetch evict_first", bf16x2, km, evict, (), 1
    for residual in (False, True):
        yield f"rmsnorm pdl residual={residual}", rmsnorm._rmsnorm_kernel, \
            dict(x_ptr=bf, res_ptr=bf, w_ptr=bf, out_ptr=bf, res_out_ptr=bf), \
            dict(HAS_RESIDUAL=residual, UNIT_OFFSET=False, BLOCK_H=2048, PDL=True), ("eps",), 1
    ptrs = dict(q_ptr=bf, k_ptr=bf, v_ptr=bf, cos_ptr=bf, sin_ptr=bf, kc_ptr=bf, vc_ptr=bf, slot_ptr="i64",
                pt_ptr="i32", lens_ptr="i32", sinks_ptr=bf, out_ptr=bf, part_ptr="fp32", ticket_ptr="i32")
    c = dict(G=4, D=64, D_V=64, D_ROT=64, INTERLEAVED=False, PAGE_SIZE=64, NUM_SPLITS=4, SOFTCAP=False,
             WINDOW=False, HAS_SINKS=False, BLOCK_G=16, BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64, BLOCK_GP=4,
             BLOCK_S=4, SUB_S=4, PRECISION="tf32", PDL=True)
    yield "decode_rope pdl", paged_attention_decode_rope._decode_rope_kernel, ptrs, c, ("scale", "softcap"), 2
    # the cached rows (and the RoPE row) prefetched before the wait, at the 8B's head dim (bf16: two lines a row)
    kv = dict(c, D=128, D_V=128, D_ROT=128, BLOCK_D=128, BLOCK_DV=128, BLOCK_N=32, KV_PREFETCH=True, K_LINES=2,
              V_LINES=2, K_STEP=64, V_STEP=64, R_LINES=1, R_STEP=64)
    yield "decode_rope pdl kv prefetch", paged_attention_decode_rope._decode_rope_kernel, ptrs, kv, \
        ("scale", "softcap"), 2
    yield "decode_rope pdl kv prefetch small tile", paged_attention_decode_rope._decode_rope_kernel, ptrs, \
        dict(kv, BLOCK_N=16), ("scale", "softcap"), 2
    yield "decode_rope pdl kv prefetch evict_last", paged_attention_decode_rope._decode_rope_kernel, ptrs, \
        dict(kv, KV_KEEP=True), ("scale", "softcap"), 2
    from autodeploy.backends.triton import paged_attention_decode

    ptrs = dict(q_ptr=bf, kc_ptr=bf, vc_ptr=bf, pt_ptr="i32", lens_ptr="i32", sinks_ptr=bf, out_ptr=bf, part_ptr="fp32")
    c = dict(G=4, D=64, D_V=64, PAGE_SIZE=64, NUM_SPLITS=4, SOFTCAP=True, WINDOW=False, HAS_SINKS=False, BLOCK_G=16,
             BLOCK_N=64, BLOCK_D=64, BLOCK_DV=64, PRECISION="tf32")
    yield "paged decode", paged_attention_decode._decode_kernel, ptrs, c, ("scale", "softcap"), 2
    from autodeploy.backends.triton import fp8_gemv

    f8 = dict(x_ptr="fp8e4nv", xs_ptr="fp32", w_ptr="fp8e4nv", ws_ptr="fp32", bias_ptr=bf, out_ptr=bf,
              part_ptr="fp32", ticket_ptr="i32")
    c = dict(BM=16, BN=64, BK=512, AMAX_BLOCK=4096, X_MODE=2, FP8_DOT=True, PER_TENSOR=False, PARTIAL=False,
             HAS_BIAS=False, EXACT=False, PRECISION="tf32", PDL=True)
    yield "fp8_gemv pdl", fp8_gemv._fp8_gemv_kernel, f8, c, (), 3
    # weight-only FP8 with fp32 x: the fp32 weight tile that fp8_gemv.launch caps at BK 128
    f32 = dict(f8, x_ptr="fp32", bias_ptr="fp32", out_ptr="fp32")
    yield "fp8_gemv weight-only fp32", fp8_gemv._fp8_gemv_kernel, f32, dict(c, BK=128, X_MODE=0, PER_TENSOR=True,
                                                                             PRECISION="ieee"), (), 3
    yield "fp8_gemv pdl prefetch", fp8_gemv._fp8_gemv_kernel, f8, dict(c, PF_LINES=4, PF_STEP=128), (), 3
    # X_MODE 3 as the 8B down runs it: bf16 x, 14 block amaxes a row, split merged at BK 256, prefetch
    m3 = dict(c, BK=256, AMAX_BLOCK=16, NB=14, X_MODE=3, PARTIAL=True, PF_LINES=2, PF_STEP=128)
    yield "fp8_gemv pdl mode=3 split prefetch", fp8_gemv._fp8_gemv_kernel, dict(f8, x_ptr=bf), m3, (), 4
    from autodeploy.backends.triton import gated_linear, linear

    g = dict(x_ptr=bf, w_ptr=bf, bias_ptr=bf, out_ptr=bf, res_ptr=bf, norm_w_ptr=bf, res_out_ptr=bf)
    for norm in (False, True):
        c = dict(BM=16, BN=32, BK=256, KIND=2, PARTIAL=False, HAS_BIAS=False, PRECISION="tf32", NORM=norm,
                 UNIT_OFFSET=False, PDL=True)
        yield f"linear pdl norm={norm}", linear._linear_kernel, g, c, ("eps",), 3
        yield f"gated_linear pdl norm={norm}", gated_linear._gated_linear_kernel, g, dict(c, ACT=0), ("eps",), 3
        pf = dict(c, PF_LINES=4, PF_STEP=64)
        yield f"linear pdl prefetch norm={norm}", linear._linear_kernel, g, pf, ("eps",), 3
        yield f"gated_linear pdl prefetch norm={norm}", gated_linear._gated_linear_kernel, g, dict(pf, ACT=0), ("eps",), 3
    yield "sum_splits pdl", linear._sum_splits_kernel, dict(part_ptr="fp32", bias_ptr=bf, out_ptr=bf), \
        dict(BLOCK=1024, HAS_BIAS=False, PDL=True), (), 1
    yield "fp8 quantize_rows pdl", fp8_gemv._quantize_rows_kernel, dict(x_ptr=bf, xq_ptr="fp8e4nv", xs_ptr="fp32"), \
        dict(BLOCK=4096, EXACT=False, PDL=True), (), 1
    from autodeploy.backends.triton import add_rmsnorm_fp8_linear

    ptrs = dict(x_ptr=bf, res_ptr=bf, norm_w_ptr=bf, res_out_ptr=bf, xq_ptr="fp8e4nv", xs_ptr="fp32")
    yield "add_rmsnorm_quantize pdl", add_rmsnorm_fp8_linear._add_rmsnorm_quantize_kernel, ptrs, \
        dict(UNIT_OFFSET=False, BLOCK_K=4096, EXACT=False, PDL=True), ("eps",), 1, 8
    from autodeploy.backends.triton import gated_act_fp8_linear

    yield "gated_act_amax pdl", gated_act_fp8_linear._gated_act_amax_kernel, \
        dict(gate_ptr=bf, up_ptr=bf, out_ptr=bf, amax_ptr="fp32"), dict(ACT=0, BLOCK=1024, PDL=True), (), 1
    from autodeploy.backends.triton import push_all_reduce

    # the push all-reduce at 8B's hidden (4096 bf16), 2 ranks, plain and fused with add + RMSNorm
    ptrs = dict(x_ptr=bf, res_ptr=bf, w_ptr=bf, out_ptr=bf, res_out_ptr=bf, peers_ptr="i64", counter_ptr="i32")
    for norm in (False, True):
        c = dict(RANK=1, W=2, MAX_ROWS=32, ROW_BYTES=32768, BITS=16, NORM=norm, UNIT_OFFSET=False,
                 BLOCK=4096, PDL=True)
        yield f"push_all_reduce pdl norm={norm}", push_all_reduce._push_all_reduce_kernel, ptrs, c, ("eps",), 1, 8
    yield ("push_all_reduce pdl pushed", push_all_reduce._push_all_reduce_kernel, ptrs, dict(c, PUSHED=True), ("eps",),
           1, 8)
    yield "push_all_gather pdl", push_all_reduce._push_all_gather_kernel, \
        dict(x_ptr=bf, out_ptr=bf, peers_ptr="i64", counter_ptr="i32"), \
        dict(RANK=0, W=2, MAX_ROWS=32, ROW_BYTES=32768, BITS=16, BLOCK=16384, PDL=True), (), 1, 16


def main() -> int:
    print(f"triton {triton.__version__}, target sm_90")
    failed = 0
    for name, kernel, ptrs, consts, floats, stages, *warps in [*cases(), *pdl_cases()]:
        try:
            c = compile_case(kernel, ptrs, consts, floats, stages=stages, **(dict(warps=warps[0]) if warps else {}))
            if c.metadata.shared > SM90_SHARED_BYTES:  # would fail at load with OutOfResources on the GPU
                raise RuntimeError(f"needs {c.metadata.shared} bytes of shared memory, sm_90 has {SM90_SHARED_BYTES}")
            print(f"ok    {name}")
        except Exception as e:  # report every case, then fail
            failed += 1
            msg = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
            print(f"FAIL  {name}: {' | '.join(m.strip() for m in msg[-6:])[:600]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
