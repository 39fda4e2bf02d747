"""Paged attention for prefill and mixed batches: chunked prefill (input_pos > 0), causal, GQA.

    q [T, n, d]: the step's new queries, packed; sequence i owns tokens cu_seqlens[i]:cu_seqlens[i+1],
                 at positions input_pos[i] .. cache_lens[i] - 1
    k_cache [num_pages, page_size, n_kv, d], v_cache [num_pages, page_size, n_kv, d_v] (new keys
    already written), page_table [B, P], cu_seqlens [B+1], input_pos [B], cache_lens [B]
      -> out [T, n, d_v]

A program owns one block of BLOCK_Q consecutive tokens of one sequence and one KV head; its
BLOCK_M = BLOCK_Q * G rows are (token, query head of that KV head) pairs, so each key tile feeds all G
heads at once (GQA-packed, every page read once per block). Blocks are numbered without any host
sync: sequence i owns blocks cu[i] // BLOCK_Q + i .. cu[i+1] // BLOCK_Q + i, which is at least
ceil(len_i / BLOCK_Q) of them, and the grid covers T // BLOCK_Q + B blocks; a program finds its
sequence by counting the block starts below its id, and a block past its sequence's end exits.
Decode tokens in a mixed batch are simply sequences of length 1.

Masks (same semantics as autodeploy::attention): key j visible to a query at position p when
j <= p and, with a sliding window W, j > p - W. Only key tiles that intersect [first visible key of
the block's first query, last query's position] are visited. Softcap and sinks as in the decode kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import dot_precision
from autodeploy.backends.triton.paged_attention_decode import _scores


@triton.jit
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, pt_ptr, cu_ptr, pos_ptr, lens_ptr, sinks_ptr, out_ptr,
    num_seqs,
    sq_t, sq_h, skc_p, skc_s, skc_h, svc_p, svc_s, svc_h, spt_b, so_t, so_h,
    scale, softcap, window,
    G: tl.constexpr, D: tl.constexpr, D_V: tl.constexpr, PAGE_SIZE: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_B: tl.constexpr, PRECISION: tl.constexpr,
):
    blk = tl.program_id(0)
    kvh = tl.program_id(1).to(tl.int64)

    # which sequence owns this block: count block starts cu[i] // BLOCK_Q + i that are <= blk
    bi = tl.arange(0, BLOCK_B)
    starts = tl.load(cu_ptr + bi, mask=bi < num_seqs, other=0) // BLOCK_Q + bi
    seq = tl.sum(((starts <= blk) & (bi < num_seqs)).to(tl.int32), axis=0) - 1
    tok0 = tl.load(cu_ptr + seq)
    seq_len = tl.load(cu_ptr + seq + 1) - tok0
    q_start = (blk - (tok0 // BLOCK_Q + seq)) * BLOCK_Q  # first token of this block within the sequence
    if q_start < seq_len:
        seq64 = seq.to(tl.int64)
        pos0 = tl.load(pos_ptr + seq) + q_start  # absolute position of the block's first query
        ctx = tl.load(lens_ptr + seq)

        r = tl.arange(0, BLOCK_M)
        tok = r // G  # [BLOCK_M] token within the block
        g = r % G  # query head within the KV head's group
        row_ok = (tok < BLOCK_Q) & (q_start + tok < seq_len)
        q_pos = pos0 + tok
        t_idx = (tok0 + q_start + tok).to(tl.int64)
        heads = kvh * G + g
        dk = tl.arange(0, BLOCK_D)
        dv = tl.arange(0, BLOCK_DV)
        q = tl.load(q_ptr + t_idx[:, None] * sq_t + heads[:, None] * sq_h + dk[None, :],
                    mask=row_ok[:, None] & (dk < D)[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

        last_pos = pos0 + tl.minimum(BLOCK_Q, seq_len - q_start) - 1
        hi = tl.minimum(last_pos + 1, ctx)
        lo = 0
        if WINDOW:
            lo = tl.maximum(pos0 - window + 1, 0)
            lo = (lo // BLOCK_N) * BLOCK_N

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            kidx = n0 + tl.arange(0, BLOCK_N)
            k_ok = kidx < hi
            page = tl.load(pt_ptr + seq64 * spt_b + kidx // PAGE_SIZE, mask=k_ok, other=0).to(tl.int64)
            off = kidx % PAGE_SIZE
            k = tl.load(kc_ptr + page[:, None] * skc_p + off[:, None] * skc_s + kvh * skc_h + dk[None, :],
                        mask=k_ok[:, None] & (dk < D)[None, :], other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_D]
            s = _scores(q, k, scale, softcap, SOFTCAP, PRECISION)  # [BLOCK_M, BLOCK_N]
            visible = k_ok[None, :] & (kidx[None, :] <= q_pos[:, None])
            if WINDOW:
                visible = visible & (kidx[None, :] > q_pos[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(vc_ptr + page[:, None] * svc_p + off[:, None] * svc_s + kvh * svc_h + dv[None, :],
                        mask=k_ok[:, None] & (dv < D_V)[None, :], other=0.0).to(q.dtype)  # [BLOCK_N, BLOCK_DV]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new

        if HAS_SINKS:
            sink = tl.load(sinks_ptr + heads).to(tl.float32) * 1.4426950408889634
            m_f = tl.maximum(m_i, sink)
            alpha = tl.exp2(m_i - m_f)
            l_i = l_i * alpha + tl.exp2(sink - m_f)
            acc = acc * alpha[:, None]
        l_i = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(out_ptr + t_idx[:, None] * so_t + heads[:, None] * so_h + dv[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dv < D_V)[None, :])


def prefill(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, page_table: Tensor, cu_seqlens: Tensor,
    input_pos: Tensor, cache_lens: Tensor, scale: float, sliding_window: Optional[int] = None,
    logit_softcap: Optional[float] = None, sinks: Optional[Tensor] = None, out: Optional[Tensor] = None,
    block_m: Optional[int] = None, block_n: Optional[int] = None, num_warps: Optional[int] = None,
    num_stages: Optional[int] = None,
) -> Tensor:
    """q [T, n, d] -> out [T, n, d_v] (written into `out` when given). See the module docstring."""
    t, n, d = q.shape
    bsz = cu_seqlens.shape[0] - 1
    n_kv, d_v, page_size = k_cache.shape[2], v_cache.shape[3], k_cache.shape[1]
    g = n // n_kv
    if out is None:
        out = torch.empty(t, n, d_v, dtype=q.dtype, device=q.device)
    if t == 0 or bsz == 0:
        return out
    # tl.dot needs every dim >= 16; smaller head dims are padded with masked lanes
    block_d, block_dv = max(16, triton.next_power_of_2(d)), max(16, triton.next_power_of_2(d_v))
    # H100 sweep (benchmarks/triton_attention_sweep.py), 2048-token prefill: d=64 best at 64 x 64, 4
    # warps (108 us); d=128 at 128 x 128, 8 warps, 3 stages (173 us vs 181 us at 64 x 64).
    wide = 64 < max(block_d, block_dv) <= 128
    if block_m is None:
        block_m = 128 if wide else 64
    if block_n is None:
        block_n = 128 if wide else 64 if max(block_d, block_dv) <= 64 else 32
    if num_warps is None:
        num_warps = 8 if wide else 4
    if num_stages is None:
        num_stages = 3 if wide else 2
    block_m = max(block_m, triton.next_power_of_2(g), 16)  # a block holds at least one token's G heads
    block_q = block_m // g
    grid = (t // block_q + bsz, n_kv)
    _prefill_kernel[grid](
        q, k_cache, v_cache, page_table, cu_seqlens, input_pos, cache_lens,
        sinks if sinks is not None else q, out, bsz,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), page_table.stride(0), out.stride(0), out.stride(1),
        float(scale), float(logit_softcap or 0.0), int(sliding_window or 0),
        G=g, D=d, D_V=d_v, PAGE_SIZE=page_size,
        SOFTCAP=logit_softcap is not None, WINDOW=sliding_window is not None, HAS_SINKS=sinks is not None,
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        BLOCK_B=triton.next_power_of_2(bsz), PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
