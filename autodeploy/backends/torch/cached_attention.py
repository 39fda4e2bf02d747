"""autodeploy::cached_attention — attention of a packed step over a paged KV cache (CPU reference).

One call serves any mix of whole prefills, chunked prefills and decodes (the step's SequenceInfo):

    q [T, n, d], k [T, n_kv, d], v [T, n_kv, d_v]    the step's new tokens, packed (sequence i owns
                                                      tokens cu_seqlens[i]:cu_seqlens[i+1])
    k_cache [num_pages, page_size, n_kv, d]           mutated: the new k / v are written at
    v_cache [num_pages, page_size, n_kv, d_v]         slot_mapping (page * page_size + offset)
    -> out [T, n, d_v]

Sequence i's new queries sit at absolute positions input_pos[i] .. cache_lens[i]-1 and attend
causally over its cached keys 0 .. cache_lens[i]-1, read through page_table[i]. Sliding window,
softcap, sinks, GQA and d_v != d mean exactly what they mean for `autodeploy::attention`: the
reference gathers each sequence's keys and calls that op, whose convention "queries are the last
s of the s_k keys" is this op's input_pos = cache_len - seq_len.

A negative slot writes nothing (padding tokens). This is the correctness reference (host syncs, a
per-sequence loop over prefill chunks, all single-token rows in one batched matmul: on the CPU a
per-sequence loop over 8 decodes costs ~4 ms per layer, mostly repeat_kv copies); fast kernels
replace it through backend selection, behind the same schema.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.attention import attention


def write_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Store the new tokens' k [T, n_kv, d] / v [T, n_kv, d_v] at their flat slots, in place."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    # flatten(0, 1) of a contiguous cache is a view, so index_copy_ writes the cache itself.
    k_cache.flatten(0, 1).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.flatten(0, 1).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def gather_pages(cache: Tensor, pages: Tensor, first: int, last: int) -> Tensor:
    """Tokens first..last-1 of one sequence whose pages are `pages` -> [last - first, n_kv, d]."""
    page_size = cache.shape[1]
    p0, p1 = first // page_size, (last + page_size - 1) // page_size
    toks = cache[pages[p0:p1]].flatten(0, 1)  # [(p1 - p0) * page_size, n_kv, d]
    return toks[first - p0 * page_size : last - p0 * page_size]


def decode_rows(q: Tensor, k_cache: Tensor, v_cache: Tensor, page_table: Tensor, cache_lens: Tensor,
                sinks: Optional[Tensor], scale: float, sliding_window: Optional[int],
                logit_softcap: Optional[float]) -> Tensor:
    """One query per sequence (its newest token), batched: q [r, n, d] over rows' caches -> [r, n, d_v].

    The same math as autodeploy::attention's explicit path (fp32 softmax; softcap, then mask, then
    sinks in the denominator), with a per-row key mask instead of a shared one.
    """
    r, n, d = q.shape
    ps, n_kv = k_cache.shape[1], k_cache.shape[2]
    total = cache_lens.long()  # [r]
    first = (total - sliding_window).clamp(min=0) if sliding_window is not None else torch.zeros_like(total)
    p0, p1 = first // ps, (total + ps - 1) // ps  # [r] page columns each row reads
    span = int((p1 - p0).max())
    cols = (p0[:, None] + torch.arange(span, device=q.device)).clamp(max=page_table.shape[1] - 1)  # [r, span]
    pages = page_table.long().gather(1, cols)  # [r, span]
    keys = k_cache[pages].flatten(1, 2).float()  # [r, K, n_kv, d]
    vals = v_cache[pages].flatten(1, 2).float()  # [r, K, n_kv, d_v]
    pos = p0[:, None] * ps + torch.arange(span * ps, device=q.device)  # [r, K] absolute key positions
    visible = (pos < total[:, None]) & (pos >= first[:, None])  # [r, K]
    vals = vals.masked_fill(~visible[:, :, None, None], 0.0)  # unwritten slots may hold anything, even NaN
    qg = q.float().reshape(r, n_kv, n // n_kv, d)  # [r, n_kv, g, d]
    logits = torch.einsum("rhgd,rkhd->rhgk", qg, keys) * scale  # [r, n_kv, g, K]
    if logit_softcap is not None:
        logits = torch.tanh(logits / logit_softcap) * logit_softcap
    logits = logits.masked_fill(~visible[:, None, None, :], float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, n_kv, n // n_kv, 1).expand(r, -1, -1, 1)
        probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(logits, dim=-1)
    out = torch.einsum("rhgk,rkhd->rhgd", probs, vals)  # [r, n_kv, g, d_v]
    return out.reshape(r, n, -1).to(q.dtype)


@torch.library.custom_op("autodeploy::cached_attention", mutates_args=("k_cache", "v_cache"))
def cached_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    seq_lens: Tensor,
    cu_seqlens: Tensor,
    input_pos: Tensor,
    cache_lens: Tensor,
    page_table: Tensor,
    slot_mapping: Tensor,
    sinks: Optional[Tensor] = None,
    scale: Optional[float] = None,
    sliding_window: Optional[int] = None,
    logit_softcap: Optional[float] = None,
) -> Tensor:
    """Writes k / v into the caches, then q [T, n, d] attends over each sequence's cache -> [T, n, d_v]."""
    write_kv(k, v, k_cache, v_cache, slot_mapping)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    starts, lens, totals = cu_seqlens[:-1].tolist(), seq_lens.tolist(), cache_lens.tolist()
    singles = [i for i, s in enumerate(lens) if s == 1]  # decodes (and one-token prefill chunks)
    if singles:
        rows = torch.tensor(singles, device=q.device)
        tok = cu_seqlens[:-1].long()[rows]  # [r] the rows' token index
        out[tok] = decode_rows(q[tok], k_cache, v_cache, page_table[rows], cache_lens[rows], sinks, scale,
                               sliding_window, logit_softcap)
    for i, (start, s, total) in enumerate(zip(starts, lens, totals)):
        if s <= 1:
            continue
        # With a window, keys before total - s - w + 1 are invisible to every query of this step:
        # skip their pages. Dropping a prefix shifts all positions alike, so the masks are unchanged.
        first = 0 if sliding_window is None else max(0, total - s - sliding_window + 1)
        ki = gather_pages(k_cache, page_table[i], first, total).to(q.dtype)  # [total - first, n_kv, d]
        vi = gather_pages(v_cache, page_table[i], first, total).to(q.dtype)  # [total - first, n_kv, d_v]
        oi = attention(q[None, start : start + s], ki[None], vi[None], sinks, scale, True, sliding_window, logit_softcap)
        out[start : start + s] = oi[0]
    return out


@cached_attention.register_fake
def _(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping,
      sinks=None, scale=None, sliding_window=None, logit_softcap=None):
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "cached_attention: n must be a multiple of n_kv")
    return q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
