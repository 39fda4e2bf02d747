"""Batch-size buckets for CUDA graphs: a decode step of b sequences replays the graph of the
smallest captured bucket B >= b, padded with B - b dummy sequences (see metadata.py)."""

from __future__ import annotations

from typing import Sequence


def normalize_buckets(sizes: Sequence[int], max_batch_size: int) -> list[int]:
    """Sorted unique bucket sizes, clipped to max_batch_size (which is always a bucket when any is
    larger, so every decode batch the scheduler can form has a graph)."""
    out = sorted({int(s) for s in sizes if 1 <= int(s) <= max_batch_size})
    if any(int(s) > max_batch_size for s in sizes) and max_batch_size not in out:
        out.append(max_batch_size)
    return out


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding n sequences; None when n exceeds every bucket."""
    for b in buckets:
        if b >= n:
            return b
    return None


def is_decode_only(num_prefill: int, num_tokens: int, num_seqs: int) -> bool:
    return num_prefill == 0 and num_tokens == num_seqs
