"""One launch per layer at decode: RoPE + KV-cache write + paged attention + split-K merge.

    q [B, n, d], k [B, n_kv, d], v [B, n_kv, d_v]   the step's new tokens before RoPE (token i is
                                                    sequence i's only one, at position cache_lens[i] - 1)
    cos / sin [B, d_rot]                            each token's RoPE row (autodeploy::rope's tables)
    k_cache / v_cache [num_pages, page_size, n_kv, d(_v)]   written at slot_mapping [B] (< 0: skipped)
    page_table [B, P] int32, cache_lens [B] int32   -> out [B, n, d_v]

The unfused decode runs four kernels per layer (rope, kv write, decode, merge), ~2 us each on an
H100 however small the work; on the 1B Llama, 16 layers x 4 launches x ~2 us = ~0.13 ms of a 1.4 ms step.
Here grid (B, n_kv, S), as in paged_attention_decode.py, and each program:

  1. loads the G = n / n_kv query heads of its KV head and rotates them in registers;
  2. the program whose split holds the new token (position ctx - 1) rotates the new key, stores it and
     the new value at the token's slot, and takes that key / value from registers: it reads the cache
     only below ctx - 1, so no program reads a slot written in this launch;
  3. online softmax over its split of the cached keys (the decode kernel's loop);
  4. one active split: normalize and store. Several: store the partial (acc, m, l), then take a
     ticket (atomic add on a counter per (sequence, KV head)); the program that draws the last
     ticket merges the partials (log-sum-exp rescaling, sinks) and sets the counter back to 0, so
     the next launch, or the next replay of a CUDA graph, starts from zero.

Memory ordering of step 4: every thread's partial stores complete before a CTA barrier, then the
ticket's atomic is acq_rel at GPU scope (release publishes them, acquire on the merging side), and
the merger reads partials with .cg loads (L2, never a stale L1 line).

The split count S is static (page-table reach, window, batch: choose_num_splits) so a CUDA graph can
hold the launch; which splits have keys, and so how many tickets a (sequence, KV head) waits for,
follows from the context length: splits past it exit without touching the counter.

RoPE: output dim j of a rotated head is x[src_j] * cos_i + sign_j * x[par_j] * sin_i (i = j mod
d_rot/2; sign -1 on the first half): rotate_half pairs (j, j + d_rot/2), interleaved pairs
(2i, 2i + 1), stored [rotated firsts | rotated seconds] like autodeploy::rope; dims >= d_rot pass
through. Rotation in fp32, rounded once to the input dtype as triton_rope does.

KV prefetch (PDL with weight prefetch on; AUTODEPLOY_ATTN_PREFETCH=0 turns it off): at batch-1 decode
this launch is a chain of dependent DRAM round trips (context length, page table, keys, values, then
the merge), ~7 us on the 8B. Before its griddepcontrol.wait, i.e. while the qkv GEMV still runs, each
program asks L2 for the cached key and value rows of its split and for its token's RoPE row
(prefetch.global.L2, no registers), so its loads after the wait hit L2. What it loads before the wait
was written before the step's first PDL kernel: the context lengths and page table by the step's
metadata copy (the PDL kernels of a step start only after the last non-PDL work before them is done),
the cached rows below ctx - 1 by earlier steps; the new key at ctx - 1, written by this launch, is never
prefetched (8B batch 1 on an H200: FP8 -17 us a step; BENCHMARKS.md, ninth session).
Small tile (AUTODEPLOY_ATTN_SMALL_TILE=1; off, written in the twelfth session, not yet timed): at head dim 128
a program holds a [32, 128] key and value tile in 220 registers a thread, 28 K a CTA (sm_90, Triton 3.6), so
it becomes resident, and starts its KV prefetch, only once programs of the GEMV before it leave its SM: the
8B INT4 qkv GEMV's one-row programs (8 K registers each, ~6 an SM) leave 16 K. The 8B INT4 step's attention
takes 8.3 us a layer against FP8's 6.1 (whose qkv GEMV has 96 programs, SMs to spare): the gap this is
meant to close. 16-key tiles compile to 147 registers, capped at 128 (maxnreg) without spills: 16 K a CTA.
AUTODEPLOY_ATTN_KV_KEEP=1 marks the prefetched lines evict_last in L2 (kept across steps while weights stream
through): measured on the 8B H200 step bf16 -15 us, FP8 and INT4 unchanged (twelfth session); off by default,
since pinned KV lines would take L2 from the prefill GEMMs' weight reuse.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import (dot_precision, pdl_enabled, pdl_launch, pdl_prefetch_enabled,
                                                pdl_wait_and_release, prefetch_l2, prefetch_l2_keep, tickets)
from autodeploy.backends.triton.paged_attention_decode import attend_paged, choose_num_splits

MERGE_TILE = 4096  # fp32 partials the merging program loads at once: 32 registers a thread at 4 warps

@triton.jit
def _rope_rows(x_row, cos_row, sin_row, D: tl.constexpr, D_ROT: tl.constexpr, INTERLEAVED: tl.constexpr,
               BLOCK_D: tl.constexpr, ROWS_OK):
    """x_row [R] row pointers -> [R, BLOCK_D] rotated rows in x's dtype (lanes >= D are 0)."""
    HALF = D_ROT // 2
    dk = tl.arange(0, BLOCK_D)
    first = dk < HALF
    rot = dk < D_ROT
    i = tl.where(first, dk, dk - HALF)  # the pair's angle index
    if INTERLEAVED:
        src = tl.where(first, 2 * i, 2 * i + 1)
        par = tl.where(first, 2 * i + 1, 2 * i)
    else:
        src = dk
        par = tl.where(first, dk + HALF, dk - HALF)
    src = tl.where(rot, src, dk)
    par = tl.where(rot, par, dk)
    mask = ROWS_OK[:, None] & (dk < D)[None, :]
    x = tl.load(x_row[:, None] + src[None, :], mask=mask, other=0.0)
    xp = tl.load(x_row[:, None] + par[None, :], mask=mask & rot[None, :], other=0.0)
    dt = x.dtype
    c = tl.load(cos_row + i, mask=rot, other=1.0).to(dt).to(tl.float32)  # the reference casts cos to q's dtype
    s = tl.load(sin_row + i, mask=rot, other=0.0).to(dt).to(tl.float32)
    s = tl.where(first, -s, s)
    out = x.to(tl.float32) * c[None, :] + xp.to(tl.float32) * s[None, :]
    return out.to(dt)


@triton.jit
def _split_range(ctx, split, window, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr):
    """(lo, hi, active): the keys lo .. hi - 1 of split `split` at context length ctx, and how many splits
    hold keys (split 0 always runs)."""
    start = 0
    if WINDOW:
        start = tl.maximum(ctx - window, 0)  # position ctx-1 sees keys > ctx-1-window
    chunk = tl.maximum(tl.cdiv(tl.cdiv(ctx - start, NUM_SPLITS), BLOCK_N) * BLOCK_N, BLOCK_N)
    active = tl.maximum(tl.cdiv(ctx - start, chunk), 1)
    lo = start + split * chunk
    hi = tl.minimum(lo + chunk, ctx)
    return lo, hi, active


@triton.jit
def _prefetch_keys(pt_row, k_base, v_base, lo, hi, skc_p, skc_s, svc_p, svc_s, D: tl.constexpr, D_V: tl.constexpr,
                   PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, K_LINES: tl.constexpr, V_LINES: tl.constexpr,
                   K_STEP: tl.constexpr, V_STEP: tl.constexpr, KEEP: tl.constexpr):
    """Ask L2 for the 128-byte lines (K_LINES of K_STEP elements a key row, V_LINES of V_STEP a value row)
    of one KV head's cached keys and values lo .. hi - 1 of a sequence (page-table row pt_row; k_base /
    v_base: the caches at that head)."""
    k_cols = tl.minimum(tl.arange(0, K_LINES) * K_STEP, D - 1)  # a line's first element, inside the row
    v_cols = tl.minimum(tl.arange(0, V_LINES) * V_STEP, D_V - 1)
    for n0 in range(lo, hi, BLOCK_N):
        kidx = tl.minimum(n0 + tl.arange(0, BLOCK_N), hi - 1)  # lanes past hi repeat the last key
        page = tl.load(pt_row + kidx // PAGE_SIZE).to(tl.int64)
        off = kidx % PAGE_SIZE
        k_lines = k_base + (page * skc_p + off * skc_s)[:, None] + k_cols[None, :]
        v_lines = v_base + (page * svc_p + off * svc_s)[:, None] + v_cols[None, :]
        if KEEP:
            prefetch_l2_keep(k_lines)
            prefetch_l2_keep(v_lines)
        else:
            prefetch_l2(k_lines)
            prefetch_l2(v_lines)


@triton.jit
def _decode_rope_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, slot_ptr, pt_ptr, lens_ptr, sinks_ptr,
    out_ptr, part_ptr, ticket_ptr,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sc_t, ss_t,
    skc_p, skc_s, skc_h, svc_p, svc_s, svc_h, spt_b, so_t, so_h,
    scale, softcap, window,
    G: tl.constexpr, D: tl.constexpr, D_V: tl.constexpr, D_ROT: tl.constexpr, INTERLEAVED: tl.constexpr,
    PAGE_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
    HAS_SINKS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_GP: tl.constexpr, BLOCK_S: tl.constexpr, SUB_S: tl.constexpr,
    PRECISION: tl.constexpr, PDL: tl.constexpr = False, KV_PREFETCH: tl.constexpr = False,
    K_LINES: tl.constexpr = 1, V_LINES: tl.constexpr = 1, K_STEP: tl.constexpr = 1, V_STEP: tl.constexpr = 1,
    R_LINES: tl.constexpr = 1, R_STEP: tl.constexpr = 1, KV_KEEP: tl.constexpr = False,
):
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    n_kv = tl.num_programs(1)
    n_heads = n_kv * G
    if KV_PREFETCH:  # before the wait: the cached rows this split reads (module docstring, "KV prefetch")
        # and the token's RoPE row (computed at the step's start: a line of each table; a hint, so safe
        # whoever writes it); after the wait it is read beside q, which the qkv GEMV just left in L2
        half = tl.minimum(tl.arange(0, R_LINES) * R_STEP, D_ROT // 2 - 1)  # the angles _rope_rows reads
        prefetch_l2(cos_ptr + seq * sc_t + half)
        prefetch_l2(sin_ptr + seq * ss_t + half)
        ctx0 = tl.load(lens_ptr + seq)
        lo0, hi0, active0 = _split_range(ctx0, split, window, NUM_SPLITS, BLOCK_N, WINDOW)
        if split < active0:
            _prefetch_keys(pt_ptr + seq * spt_b, kc_ptr + kvh * skc_h, vc_ptr + kvh * svc_h, lo0,
                           tl.minimum(hi0, ctx0 - 1), skc_p, skc_s, svc_p, svc_s, D, D_V, PAGE_SIZE, BLOCK_N,
                           K_LINES, V_LINES, K_STEP, V_STEP, KV_KEEP)
    pdl_wait_and_release(PDL)  # q / k / v come from the qkv GEMV launched just before

    ctx = tl.load(lens_ptr + seq)
    lo, hi, active = _split_range(ctx, split, window, NUM_SPLITS, BLOCK_N, WINDOW)
    holds_new = (lo <= ctx - 1) & (ctx - 1 < hi)
    writes = holds_new | ((ctx <= 0) & (split == 0))  # ctx 0 (no key at all): split 0 still writes

    if split < active:
        g = tl.arange(0, BLOCK_G)
        g_ok = g < G
        heads = kvh * G + g  # the query heads reading this KV head
        dk = tl.arange(0, BLOCK_D)
        dv = tl.arange(0, BLOCK_DV)
        q = _rope_rows(q_ptr + seq * sq_t + heads * sq_h, cos_ptr + seq * sc_t, sin_ptr + seq * ss_t,
                       D, D_ROT, INTERLEAVED, BLOCK_D, g_ok)  # [BLOCK_G, BLOCK_D]

        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
        hi_cached = tl.minimum(hi, ctx - 1)  # the new key comes from registers, not the cache
        m_i, l_i, acc = attend_paged(q, m_i, l_i, acc, lo, hi_cached, pt_ptr + seq * spt_b, kc_ptr + kvh * skc_h,
                                     vc_ptr + kvh * svc_h, skc_p, skc_s, svc_p, svc_s, dk, dv, scale, softcap,
                                     D, D_V, PAGE_SIZE, BLOCK_N, SOFTCAP, PRECISION)

        if writes:
            one = kvh + tl.arange(0, 1)  # [1]: this KV head as a one-row block
            k_new = _rope_rows(k_ptr + seq * sk_t + one * sk_h, cos_ptr + seq * sc_t, sin_ptr + seq * ss_t,
                               D, D_ROT, INTERLEAVED, BLOCK_D, one >= 0)  # [1, BLOCK_D]
            v_new = tl.load(v_ptr + seq * sv_t + one[:, None] * sv_h + dv[None, :],
                            mask=(dv < D_V)[None, :], other=0.0)  # [1, BLOCK_DV]
            k_new = k_new.to(kc_ptr.dtype.element_ty)  # what the cache holds from now on
            v_new = v_new.to(vc_ptr.dtype.element_ty)
            slot = tl.load(slot_ptr + seq).to(tl.int64)
            if slot >= 0:
                pg = slot // PAGE_SIZE
                po = slot % PAGE_SIZE
                tl.store(kc_ptr + pg * skc_p + po * skc_s + one[:, None] * skc_h + dk[None, :], k_new,
                         mask=(dk < D)[None, :])
                tl.store(vc_ptr + pg * svc_p + po * svc_s + one[:, None] * svc_h + dv[None, :], v_new,
                         mask=(dv < D_V)[None, :])
            if holds_new:
                kq = k_new.to(q.dtype).to(tl.float32)
                s_new = tl.sum(q.to(tl.float32) * kq, axis=1) * scale  # [BLOCK_G]
                if SOFTCAP:
                    s_new = softcap * (2.0 * tl.sigmoid(2.0 * s_new / softcap) - 1.0)
                s_new = s_new * 1.4426950408889634
                m_new = tl.maximum(m_i, s_new)
                alpha = tl.exp2(m_i - m_new)
                p_new = tl.exp2(s_new - m_new)
                l_i = l_i * alpha + p_new
                vq = v_new.to(q.dtype)
                acc = acc * alpha[:, None] + p_new.to(vq.dtype).to(tl.float32)[:, None] * vq.to(tl.float32)
                m_i = m_new

        out_rows = out_ptr + seq * so_t + heads * so_h  # [BLOCK_G]
        if NUM_SPLITS == 1:  # static: no partials or counters exist (their pointers are placeholders)
            _finish(acc, m_i, l_i, out_rows, sinks_ptr + heads, g_ok, D_V, HAS_SINKS, BLOCK_DV)
        elif active == 1:
            _finish(acc, m_i, l_i, out_rows, sinks_ptr + heads, g_ok, D_V, HAS_SINKS, BLOCK_DV)
        else:
            row = ((seq * n_heads + heads) * NUM_SPLITS + split) * (D_V + 2)  # partials [B, n, S, d_v + 2]
            tl.store(part_ptr + row[:, None] + dv[None, :], acc, mask=g_ok[:, None] & (dv < D_V)[None, :])
            tl.store(part_ptr + row + D_V, m_i, mask=g_ok)
            tl.store(part_ptr + row + D_V + 1, l_i, mask=g_ok)
            tl.debug_barrier()  # every thread's partial stores precede the ticket's release
            ticket = tl.atomic_add(ticket_ptr + seq * n_kv + kvh, 1, sem="acq_rel", scope="gpu")
            if ticket == active - 1:  # the last split of this (sequence, KV head) to finish merges
                tl.debug_barrier()
                _merge_splits(part_ptr, sinks_ptr, out_ptr + seq * so_t, so_h, (seq * n_heads + kvh * G) * NUM_SPLITS,
                              kvh * G, active, G, D_V, NUM_SPLITS, HAS_SINKS, BLOCK_GP, BLOCK_S, SUB_S, BLOCK_DV)
                tl.store(ticket_ptr + seq * n_kv + kvh, 0)  # every split has arrived: reset for the next launch


@triton.jit
def _finish(acc, m_i, l_i, out_rows, sink_ptrs, g_ok, D_V: tl.constexpr, HAS_SINKS: tl.constexpr,
            BLOCK_DV: tl.constexpr):
    """One split held every key: add the sinks to the denominator, normalize, store [BLOCK_G, d_v]."""
    if HAS_SINKS:
        sink = tl.load(sink_ptrs, mask=g_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        m_f = tl.maximum(m_i, sink)
        alpha = tl.exp2(m_i - m_f)
        l_i = l_i * alpha + tl.exp2(sink - m_f)
        acc = acc * alpha[:, None]
    l_i = tl.where(l_i > 0, l_i, 1.0)  # no key at all (cache_len 0) gives zeros
    dv = tl.arange(0, BLOCK_DV)
    tl.store(out_rows[:, None] + dv[None, :], (acc / l_i[:, None]).to(out_rows.dtype.element_ty),
             mask=g_ok[:, None] & (dv < D_V)[None, :])


@triton.jit
def _merge_splits(part_ptr, sinks_ptr, out_row, so_h, first_row, head0, active,
                  G: tl.constexpr, D_V: tl.constexpr, NUM_SPLITS: tl.constexpr, HAS_SINKS: tl.constexpr,
                  BLOCK_GP: tl.constexpr, BLOCK_S: tl.constexpr, SUB_S: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Log-sum-exp merge of the first `active` split partials of G heads, all heads at once: a single
    program does it, so its L2 round trips are serial latency (one for m / l, then one per SUB_S
    splits of acc, issued together), not G of each."""
    gg = tl.arange(0, BLOCK_GP)
    g_ok = gg < G
    sp = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    ok = g_ok[:, None] & (sp < active)[None, :]
    rows = (first_row + gg[:, None] * NUM_SPLITS + sp[None, :]) * (D_V + 2)  # [BLOCK_GP, BLOCK_S]
    m = tl.load(part_ptr + rows + D_V, mask=ok, other=float("-inf"), cache_modifier=".cg")
    lp = tl.load(part_ptr + rows + D_V + 1, mask=ok, other=0.0, cache_modifier=".cg")
    m_max = tl.max(m, axis=1)  # [BLOCK_GP]; finite for real heads: every active split holds >= 1 key
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head0 + gg, mask=g_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        m_max = tl.maximum(m_max, sink)
    m_max = tl.where(g_ok, m_max, 0.0)  # padding heads: keep exp2 finite
    l_tot = tl.sum(lp * tl.exp2(m - m_max[:, None]), axis=1)
    if HAS_SINKS:
        l_tot += tl.exp2(sink - m_max)
    l_tot = tl.where(g_ok, l_tot, 1.0)
    o = tl.zeros([BLOCK_GP, BLOCK_DV], tl.float32)
    for s0 in tl.static_range(0, BLOCK_S, SUB_S):
        if s0 < active:
            ss = s0 + tl.arange(0, SUB_S)
            ok_s = g_ok[:, None] & (ss < active)[None, :]  # [BLOCK_GP, SUB_S]
            rows_s = (first_row + gg[:, None] * NUM_SPLITS + ss[None, :]) * (D_V + 2)
            w = tl.exp2(tl.load(part_ptr + rows_s + D_V, mask=ok_s, other=float("-inf"), cache_modifier=".cg")
                        - m_max[:, None])  # [BLOCK_GP, SUB_S]
            a = tl.load(part_ptr + rows_s[:, :, None] + dv[None, None, :],
                        mask=ok_s[:, :, None] & (dv < D_V)[None, None, :], other=0.0,
                        cache_modifier=".cg")  # [BLOCK_GP, SUB_S, BLOCK_DV]
            o += tl.sum(a * w[:, :, None], axis=1)
    o = o / l_tot[:, None]
    tl.store(out_row + (head0 + gg)[:, None] * so_h + dv[None, :], o.to(out_row.dtype.element_ty),
             mask=g_ok[:, None] & (dv < D_V)[None, :])


def decode_rope(
    q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, interleaved: bool,
    k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor, page_table: Tensor, cache_lens: Tensor,
    scale: float, sliding_window: Optional[int] = None, logit_softcap: Optional[float] = None,
    sinks: Optional[Tensor] = None, out: Optional[Tensor] = None,
    num_splits: Optional[int] = None, block_n: Optional[int] = None, num_warps: int = 4, num_stages: int = 2,
) -> Tensor:
    """See the module docstring. q / k / v need only a contiguous head dim (views of a fused qkv)."""
    bsz, n, d = q.shape
    n_kv, d_v, page_size = k_cache.shape[2], v_cache.shape[3], k_cache.shape[1]
    g = n // n_kv
    d_rot = cos.shape[-1]
    if out is None:
        out = torch.empty(bsz, n, d_v, dtype=q.dtype, device=q.device)
    if bsz == 0:
        return out
    if num_splits is None:
        reach = page_table.shape[1] * page_size  # keys a query can see: the table's reach, or the window
        num_splits = choose_num_splits(bsz, n_kv, min(reach, sliding_window or reach), q.device)
    block_d, block_dv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(d_v))
    launch_regs = {}
    if block_n is None:  # as paged_attention_decode.decode
        block_n = 64 if max(block_d, block_dv) <= 64 else 32
        if block_n == 32 and small_tile(q.device):  # 16 keys a tile in 128 registers a thread ("Small tile")
            block_n, launch_regs = 16, dict(maxnreg=SMALL_TILE_REGISTERS)
    block_gp, block_s = triton.next_power_of_2(g), triton.next_power_of_2(num_splits)
    if num_splits > 1:
        part = torch.empty(bsz, n, num_splits, d_v + 2, dtype=torch.float32, device=q.device)
        counters = tickets(q.device, bsz * n_kv)
    else:
        part = counters = out  # unused
    sinks_arg = sinks if sinks is not None else q
    _decode_rope_kernel[(bsz, n_kv, num_splits)](
        q, k, v, cos, sin, k_cache, v_cache, slot_mapping, page_table, cache_lens, sinks_arg, out, part, counters,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), page_table.stride(0), out.stride(0), out.stride(1),
        float(scale), float(logit_softcap or 0.0), int(sliding_window or 0),
        G=g, D=d, D_V=d_v, D_ROT=d_rot, INTERLEAVED=bool(interleaved), PAGE_SIZE=page_size, NUM_SPLITS=num_splits,
        SOFTCAP=logit_softcap is not None, WINDOW=sliding_window is not None, HAS_SINKS=sinks is not None,
        BLOCK_G=max(16, triton.next_power_of_2(g)), BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        BLOCK_GP=block_gp, BLOCK_S=block_s, SUB_S=max(1, min(block_s, MERGE_TILE // (block_gp * block_dv))),
        PRECISION=dot_precision(q.dtype), PDL=pdl_enabled(q.device), **_kv_prefetch_meta(k_cache, v_cache, cos),
        num_warps=num_warps, num_stages=num_stages, **launch_regs, **pdl_launch(q.device),
    )
    return out


SMALL_TILE_REGISTERS = 128  # 16 K registers a CTA at 4 warps: fits beside 6 one-row INT4 GEMV programs an SM


def small_tile(device: torch.device) -> bool:
    """AUTODEPLOY_ATTN_SMALL_TILE=1 on a GPU (module docstring, "Small tile")."""
    return device.type == "cuda" and os.environ.get("AUTODEPLOY_ATTN_SMALL_TILE", "0") == "1"


@functools.lru_cache(maxsize=None)  # per launch at decode, like pdl_enabled
def kv_prefetch_enabled(device: torch.device) -> bool:
    """The cached keys' prefetch before the PDL wait: with PDL weight prefetch (compiled, sm_90+) unless
    AUTODEPLOY_ATTN_PREFETCH=0."""
    return pdl_prefetch_enabled(device) and os.environ.get("AUTODEPLOY_ATTN_PREFETCH", "1") == "1"


def _kv_prefetch_meta(k_cache: Tensor, v_cache: Tensor, cos: Tensor) -> dict:
    """KV_PREFETCH and the 128-byte line layout of a cached key / value row and of a RoPE row's first half
    (line counts: powers of two, for tl.arange)."""
    if not kv_prefetch_enabled(k_cache.device):
        return {}
    ks, vs, rs = (128 // t.element_size() for t in (k_cache, v_cache, cos))  # elements a line

    def lines(n: int, step: int) -> int:
        return triton.next_power_of_2(triton.cdiv(max(n, 1), step))

    keep = os.environ.get("AUTODEPLOY_ATTN_KV_KEEP", "0") == "1"  # the KV lines marked evict_last in L2
    return dict(KV_PREFETCH=True, KV_KEEP=keep, K_STEP=ks, V_STEP=vs, R_STEP=rs, K_LINES=lines(k_cache.shape[-1], ks),
                V_LINES=lines(v_cache.shape[-1], vs), R_LINES=lines(cos.shape[-1] // 2, rs))
