"""CachedModel: the transformed graph plus its paged KV cache — one call per engine step.

    cm = CachedModel(gm, num_pages=512, page_size=16, device="cuda")
    logits = cm(SequenceInfo.build(chunks, cm.page_size, device=cm.device))   # [b, V] float32

The graph comes out of `insert_kv_cache`; it is called as

    gm(input_ids [1, T], position_ids [1, T], seq_lens, cu_seqlens, input_pos, cache_lens,
       page_table, slot_mapping, k_cache_0, v_cache_0, k_cache_1, v_cache_1, …) -> logits [b, V]

and returns only each sequence's last-token logits. The caches are graph inputs, not parameters,
so `load_weights` never sees them and one graph can serve pools of any size. Pages are ids
0..num_pages-1; which sequence owns which page is the page pool's business (SequenceInfo's
page_table / slot_mapping say it to the graph).
"""

from __future__ import annotations


import torch
from torch import fx

from autodeploy.backends import triton_kernel
from autodeploy.errors import UnsupportedModelError
from autodeploy.runtime.kv_cache import LayerCacheSpec, allocate_kv_caches, bytes_per_page, pages_for_budget
from autodeploy.runtime.sequence_info import SequenceInfo

SPEC_KEY = "kv_cache_spec"  # gm.meta key written by insert_kv_cache: list[LayerCacheSpec]


def has_kv_cache(gm: fx.GraphModule) -> bool:
    """True when insert_kv_cache rewrote this graph (it then takes SequenceInfo + caches, not [b, s] ids)."""
    return bool(gm.meta.get(SPEC_KEY))


def cache_specs(gm: fx.GraphModule) -> list[LayerCacheSpec]:
    if not has_kv_cache(gm):
        raise UnsupportedModelError(
            "the graph has no KV cache inputs: insert_kv_cache did not run or found no canonical attention"
        )
    return list(gm.meta[SPEC_KEY])


class CachedModel:
    """A cached graph with its KV caches allocated on `device`; `forward(info)` runs one step."""

    def __init__(self, gm: fx.GraphModule, num_pages: int, page_size: int, device: torch.device | str = "cpu"):
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"CachedModel needs num_pages >= 1 and page_size >= 1, got {num_pages}, {page_size}")
        self.gm = gm
        self.specs = cache_specs(gm)
        self.num_pages = num_pages
        self.page_size = page_size
        self.device = torch.device(device)
        self.caches = allocate_kv_caches(self.specs, num_pages, page_size, self.device)

    @classmethod
    def for_budget(cls, gm: fx.GraphModule, memory_gb: float, page_size: int, device: torch.device | str = "cpu"):
        """As many pages as `memory_gb` GiB of cache holds."""
        return cls(gm, pages_for_budget(cache_specs(gm), page_size, memory_gb), page_size, device)

    @property
    def bytes_per_page(self) -> int:
        return bytes_per_page(self.specs, self.page_size)

    @property
    def num_layers(self) -> int:
        return len(self.specs)

    accepts_token_source = True  # forward() can take next-step input ids from the device

    @torch.inference_mode()
    def forward(self, info: SequenceInfo, token_source: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Writes the step's k / v into the caches and returns each sequence's last-token logits [b, V] (fp32).

        token_source = (prev_tokens [n], source [T]): token t of the step is prev_tokens[source[t]]
        where source[t] >= 0 (a token sampled by the previous step, still on the device).
        """
        if info.page_size != self.page_size:
            raise ValueError(f"SequenceInfo has page_size {info.page_size}, the cache {self.page_size}")
        if info.input_ids.device != self.device:
            info = info.to(self.device)
        if token_source is not None:
            info.input_ids = apply_token_source(info.input_ids, *token_source)
        return self.gm(*info.graph_inputs(), *self.caches).float()

    __call__ = forward


def _token_source_kernel():
    """backends/triton/token_source.py, or None without a usable Triton."""
    return triton_kernel("token_source")


def substitute_tokens_(ids: torch.Tensor, prev_tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """In place on ids [T]: every position whose source >= 0 becomes prev_tokens[source]. On CUDA one
    launch (backends/triton/token_source.py) instead of apply_token_source's five; returns ids."""
    if ids.is_cuda:
        kernel = _token_source_kernel()
        if kernel is not None and kernel.supports(ids, prev_tokens, source):
            return kernel.substitute_(ids, prev_tokens, source)
    return ids.copy_(apply_token_source(ids, prev_tokens, source))


def apply_token_source(input_ids: torch.Tensor, prev_tokens: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """input_ids [T] with every position whose source >= 0 replaced by prev_tokens[source] (device ops only)."""
    source = source.to(input_ids.device, non_blocking=True)
    taken = prev_tokens.to(input_ids.device).index_select(0, source.clamp(min=0))
    return torch.where(source >= 0, taken, input_ids)
