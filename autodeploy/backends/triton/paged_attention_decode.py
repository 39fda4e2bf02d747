"""Paged attention for decode steps (one new query per sequence), flash-decoding style.

    q [B, n, d] (token i is sequence i's only new query, at position cache_lens[i] - 1)
    k_cache [num_pages, page_size, n_kv, d], v_cache [num_pages, page_size, n_kv, d_v]
    page_table [B, P] int32, cache_lens [B] int32 (keys 0..cache_len-1, the new one included)
      -> out [B, n, d_v]

Grid (B, n_kv, S). A program owns one KV head of one sequence, so the G = n / n_kv query heads that
share it are one [G, d] tile against each [BLOCK_N, d] key tile: every KV page is read once per step
(GQA-packed; G is padded to 16 rows for tl.dot, free in a memory-bound kernel). At batch 1 there are
only n_kv programs (8 on Llama-3 shapes) for ~132 SMs, so the context is split S ways (split-K over
keys), each split writes an unnormalized partial (acc, running max m, sum l), and a second small
kernel merges the S partials with the usual log-sum-exp rescaling. S depends only on static shapes
and config (batch, heads, page-table width, window), never on the context lengths, so a CUDA graph
can capture it; splits that fall past a sequence's length exit at once.

Per step semantics (same as autodeploy::attention with causal=True on the cached keys):
sliding window W keeps keys j > pos - W; logit_softcap c maps s -> c * tanh(s / c) after the scale;
sinks [n] add exp(sink) to each head's softmax denominator only. Softmax runs in base 2 with the
log2(e) factor folded into the scale.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import dot_precision, num_sms

# Measured on an H100 (benchmarks/triton_attention_sweep.py): 1B shape, b=1, 384 keys: 6 splits of 64
# keys 5.0 us vs 3 of 128 keys 5.4 us; 4096 keys: 64 splits 7.4 us vs 32 splits 7.8 us.
MIN_KEYS_PER_SPLIT = 64  # below this a split's fixed cost (q load, partial write, merge) dominates
MAX_SPLITS = 64
WAVES = 4  # programs per SM to aim for when the batch alone leaves SMs idle


@triton.jit
def _scores(q, k, scale, softcap, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    """q [M, D] . k [N, D]^T -> logits in base-2 units [M, N] (scale, optional softcap, * log2 e)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    if SOFTCAP:
        # c * tanh(s / c) with tanh(x) = 2 sigmoid(2x) - 1 (no libdevice tanh needed)
        s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
    return s * 1.4426950408889634


@triton.jit
def attend_paged(q, m_i, l_i, acc, lo, hi, pt_row, k_base, v_base, skc_p, skc_s, svc_p, svc_s, dk, dv, scale, softcap,
                 D: tl.constexpr, D_V: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                 SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax of q [BLOCK_G, BLOCK_D] over one sequence's cached keys lo .. hi - 1, carried in
    (m_i, l_i [BLOCK_G], acc [BLOCK_G, BLOCK_DV]). pt_row: the sequence's page-table row; k_base /
    v_base: the caches at this KV head."""
    for n0 in range(lo, hi, BLOCK_N):
        kidx = n0 + tl.arange(0, BLOCK_N)
        k_ok = kidx < hi
        page = tl.load(pt_row + kidx // PAGE_SIZE, mask=k_ok, other=0).to(tl.int64)
        off = kidx % PAGE_SIZE
        k = tl.load(k_base + page[:, None] * skc_p + off[:, None] * skc_s + dk[None, :],
                    mask=k_ok[:, None] & (dk < D)[None, :], other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_D]
        s = _scores(q, k, scale, softcap, SOFTCAP, PRECISION)
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile holds >= 1 visible key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + page[:, None] * svc_p + off[:, None] * svc_s + dv[None, :],
                    mask=k_ok[:, None] & (dv < D_V)[None, :], other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_DV]
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _decode_kernel(
    q_ptr, kc_ptr, vc_ptr, pt_ptr, lens_ptr, sinks_ptr, out_ptr, part_ptr,
    sq_t, sq_h, skc_p, skc_s, skc_h, svc_p, svc_s, svc_h, spt_b, so_t, so_h,
    scale, softcap, window,
    G: tl.constexpr, D: tl.constexpr, D_V: tl.constexpr, PAGE_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    n_heads = tl.num_programs(1) * G

    g = tl.arange(0, BLOCK_G)
    g_ok = g < G
    heads = kvh * G + g  # the query heads reading this KV head
    dk = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + seq * sq_t + heads[:, None] * sq_h + dk[None, :],
                mask=g_ok[:, None] & (dk < D)[None, :], other=0.0)  # [BLOCK_G, BLOCK_D]

    ctx = tl.load(lens_ptr + seq)
    start = 0
    if WINDOW:
        start = tl.maximum(ctx - window, 0)  # position ctx-1 sees keys > ctx-1-window
    chunk = tl.cdiv(tl.cdiv(ctx - start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = start + split * chunk
    hi = tl.minimum(lo + chunk, ctx)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    m_i, l_i, acc = attend_paged(q, m_i, l_i, acc, lo, hi, pt_ptr + seq * spt_b, kc_ptr + kvh * skc_h,
                                 vc_ptr + kvh * svc_h, skc_p, skc_s, svc_p, svc_s, dk, dv, scale, softcap,
                                 D, D_V, PAGE_SIZE, BLOCK_N, SOFTCAP, PRECISION)

    if NUM_SPLITS == 1:
        if HAS_SINKS:
            sink = tl.load(sinks_ptr + heads, mask=g_ok, other=0.0).to(tl.float32) * 1.4426950408889634
            m_f = tl.maximum(m_i, sink)
            alpha = tl.exp2(m_i - m_f)
            l_i = l_i * alpha + tl.exp2(sink - m_f)
            acc = acc * alpha[:, None]
        l_i = tl.where(l_i > 0, l_i, 1.0)  # an empty sequence (cache_len 0, padding) gives zeros
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq * so_t + heads[:, None] * so_h + dv[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=g_ok[:, None] & (dv < D_V)[None, :])
    else:
        row = ((seq * n_heads + heads) * NUM_SPLITS + split) * (D_V + 2)  # partials [B, n, S, d_v + 2]
        tl.store(part_ptr + row[:, None] + dv[None, :], acc, mask=g_ok[:, None] & (dv < D_V)[None, :])
        tl.store(part_ptr + row + D_V, m_i, mask=g_ok)
        tl.store(part_ptr + row + D_V + 1, l_i, mask=g_ok)


@triton.jit
def _merge_kernel(
    part_ptr, sinks_ptr, out_ptr, so_t, so_h,
    D_V: tl.constexpr, NUM_SPLITS: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    sp = tl.arange(0, BLOCK_S)
    s_ok = sp < NUM_SPLITS
    rows = ((seq * tl.num_programs(1) + head) * NUM_SPLITS + sp) * (D_V + 2)  # this head's S partials
    dv = tl.arange(0, BLOCK_DV)
    m = tl.load(part_ptr + rows + D_V, mask=s_ok, other=float("-inf"))
    l = tl.load(part_ptr + rows + D_V + 1, mask=s_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        m_max = tl.maximum(m_max, sink)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # every split empty: keep exp2 finite
    w = tl.exp2(m - m_max)  # 0 for empty splits (m = -inf)
    l_tot = tl.sum(l * w, axis=0)
    if HAS_SINKS:
        l_tot += tl.exp2(sink - m_max)
    acc = tl.load(part_ptr + rows[:, None] + dv[None, :], mask=s_ok[:, None] & (dv < D_V)[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(l_tot > 0, l_tot, 1.0)
    tl.store(out_ptr + seq * so_t + head * so_h + dv, out.to(out_ptr.dtype.element_ty), mask=dv < D_V)


def choose_num_splits(batch: int, n_kv: int, max_context: int, device: torch.device) -> int:
    """One split when batch x KV heads already covers the SMs (b=64 on the 1B shape: 1 split 50.8 us,
    2 splits slower); else ~WAVES programs per SM, but no split shorter than MIN_KEYS_PER_SPLIT keys of
    the largest context the page table can address (a static shape: CUDA-graph safe)."""
    programs, sms = max(batch * n_kv, 1), num_sms(device)
    if programs >= sms:
        return 1
    useful = triton.cdiv(max_context, MIN_KEYS_PER_SPLIT)
    return max(1, min(triton.cdiv(WAVES * sms, programs), useful, MAX_SPLITS))


def decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, page_table: Tensor, cache_lens: Tensor,
    scale: float, sliding_window: Optional[int] = None, logit_softcap: Optional[float] = None,
    sinks: Optional[Tensor] = None, out: Optional[Tensor] = None,
    num_splits: Optional[int] = None, block_n: Optional[int] = None, num_warps: int = 4, num_stages: int = 2,
) -> Tensor:
    """q [B, n, d] -> out [B, n, d_v] (written into `out` when given). See the module docstring."""
    bsz, n, d = q.shape
    n_kv, d_v, page_size = k_cache.shape[2], v_cache.shape[3], k_cache.shape[1]
    g = n // n_kv
    if out is None:
        out = torch.empty(bsz, n, d_v, dtype=q.dtype, device=q.device)
    if bsz == 0:
        return out
    if num_splits is None:
        reach = page_table.shape[1] * page_size  # keys a query can see: the table's reach, or the window
        num_splits = choose_num_splits(bsz, n_kv, min(reach, sliding_window or reach), q.device)
    # tl.dot needs every dim >= 16; smaller head dims are padded with masked lanes
    block_d, block_dv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(d_v))
    if block_n is None:  # 8B shape (d=128), b=1, 4096 keys: BLOCK_N 32 9.5 us, 64 10.0 us
        block_n = 64 if max(block_d, block_dv) <= 64 else 32
    if num_splits > 1:  # partials [B, n, S] of (acc [d_v], running max m, sum l), one allocation
        part = torch.empty(bsz, n, num_splits, d_v + 2, dtype=torch.float32, device=q.device)
    else:
        part = out  # unused
    sinks_arg = sinks if sinks is not None else q
    _decode_kernel[(bsz, n_kv, num_splits)](
        q, k_cache, v_cache, page_table, cache_lens, sinks_arg, out, part,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0), out.stride(0), out.stride(1),
        float(scale), float(logit_softcap or 0.0), int(sliding_window or 0),
        G=g, D=d, D_V=d_v, PAGE_SIZE=page_size, NUM_SPLITS=num_splits,
        SOFTCAP=logit_softcap is not None, WINDOW=sliding_window is not None, HAS_SINKS=sinks is not None,
        BLOCK_G=max(16, triton.next_power_of_2(g)), BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1:
        _merge_kernel[(bsz, n)](
            part, sinks_arg, out, out.stride(0), out.stride(1),
            D_V=d_v, NUM_SPLITS=num_splits, HAS_SINKS=sinks is not None,
            BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_DV=block_dv, num_warps=2,
        )
    return out
