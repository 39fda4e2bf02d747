"""The paged KV cache tensors: what each layer needs, how many bytes a page costs, allocation.

`insert_kv_cache` records one `LayerCacheSpec` per attention layer in `gm.meta["kv_cache_spec"]`;
the caches are then graph inputs (k_cache_0, v_cache_0, k_cache_1, …) that this module allocates:

    k_cache [num_pages, page_size, n_kv, head_dim]
    v_cache [num_pages, page_size, n_kv, v_head_dim]

A page id means the same tokens in every layer, so one page costs, over all layers,
page_size * n_kv * (head_dim + v_head_dim) * itemsize bytes. Which sequence owns which page is
the page pool's business, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from autodeploy.errors import RecipeError

GiB = 1024**3


@dataclass(frozen=True)
class LayerCacheSpec:
    """The KV cache one attention layer reads and writes."""

    n_kv: int  # KV heads
    head_dim: int  # d of q / k
    v_head_dim: int  # d_v (differs from d for DeepSeek MLA)
    dtype: torch.dtype
    sliding_window: int | None = None  # the layer never reads keys further back than this

    def bytes_per_token(self) -> int:
        return self.n_kv * (self.head_dim + self.v_head_dim) * torch.empty(0, dtype=self.dtype).element_size()


def bytes_per_page(specs: Sequence[LayerCacheSpec], page_size: int) -> int:
    """Bytes of one page id across all layers (k and v)."""
    return page_size * sum(s.bytes_per_token() for s in specs)


def pages_for_budget(specs: Sequence[LayerCacheSpec], page_size: int, memory_gb: float) -> int:
    """The most pages a budget of `memory_gb` GiB holds; at least one page must fit."""
    per_page = bytes_per_page(specs, page_size)
    pages = int(memory_gb * GiB) // per_page
    if pages < 1:
        raise RecipeError(
            f"kv_memory_gb={memory_gb:g} holds no KV page (one page of {page_size} tokens needs {per_page} bytes)"
        )
    return pages


def allocate_kv_caches(
    specs: Sequence[LayerCacheSpec], num_pages: int, page_size: int, device: torch.device | str
) -> list[torch.Tensor]:
    """[k_cache_0, v_cache_0, k_cache_1, v_cache_1, …] in the order of the graph's cache inputs.

    Zero-filled: slots a page table points at but no step has written yet (the tail of a last
    page) are masked by the attention, and zeros keep them finite for kernels that load whole pages.
    """
    caches = []
    for s in specs:
        caches.append(torch.zeros(num_pages, page_size, s.n_kv, s.head_dim, dtype=s.dtype, device=device))
        caches.append(torch.zeros(num_pages, page_size, s.n_kv, s.v_head_dim, dtype=s.dtype, device=device))
    return caches
