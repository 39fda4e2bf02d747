"""One host-to-device copy per step: the step's metadata packed into fixed device buffers.

Every integer field of SequenceInfo (plus the per-sequence sampling temperature) is written into
one pinned host byte buffer at offsets that depend only on the step's shape (T tokens, b
sequences, P page-table columns), then copied to a device byte buffer with the same layout in a
single `copy_(non_blocking=True)`. The SequenceInfo handed to the graph holds views into the
device buffer, so a CUDA graph captured for a shape reads every later step of that shape from the
same addresses.

token_source [T] (the overlapped engine's placeholders): -1, or the row of `prev_tokens` (a fixed device
buffer holding the previous step's sampled tokens) that holds token t. A CUDA graph takes those tokens
into input_ids itself (CompiledModel._graph_step), so a decode step adds no launches for them.

    pinned host bytes  [ input_ids i64[T] | position_ids i64[T] | slot_mapping i64[T] | token_source i64[T] |
                         last_token_idx i64[b] | seq_lens i32[b] | cu_seqlens i32[b+1] |
                         input_pos i32[b] | cache_lens i32[b] | page_table i32[b, P] | temperature f32[b] ]
          │ one H2D copy of the used prefix
          ▼
    device bytes       same layout; SequenceInfo fields and `temperature` are views into it

A step can be padded to B >= b sequences (a CUDA-graph bucket, or b >= 2 for torch.compile):
B - b one-token sequences are appended, each decoding position 0 with its KV write going to
`pad_page`, a page no request owns, so they never touch a live request's cache.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from autodeploy.runtime.sequence_info import SequenceInfo

_ALIGN = 16  # bytes; keeps every view aligned for vectorized int64 loads

# (field, dtype, length as a function of (T, b, P))
_LAYOUT = (
    ("input_ids", torch.int64, lambda T, b, P: T),
    ("position_ids", torch.int64, lambda T, b, P: T),
    ("slot_mapping", torch.int64, lambda T, b, P: T),
    ("token_source", torch.int64, lambda T, b, P: T),
    ("last_token_idx", torch.int64, lambda T, b, P: b),
    ("seq_lens", torch.int32, lambda T, b, P: b),
    ("cu_seqlens", torch.int32, lambda T, b, P: b + 1),
    ("input_pos", torch.int32, lambda T, b, P: b),
    ("cache_lens", torch.int32, lambda T, b, P: b),
    ("page_table", torch.int32, lambda T, b, P: b * P),
    ("temperature", torch.float32, lambda T, b, P: b),
)


@functools.lru_cache(maxsize=1024)
def layout(T: int, b: int, P: int) -> tuple[dict[str, tuple[int, torch.dtype, int]], int]:
    """{field: (byte offset, dtype, numel)} and the total bytes for a step of shape (T, b, P)."""
    out, off = {}, 0
    for name, dtype, length in _LAYOUT:
        n = length(T, b, P)
        out[name] = (off, dtype, n)
        off += (n * dtype.itemsize + _ALIGN - 1) // _ALIGN * _ALIGN
    return out, off


def _views(buf: torch.Tensor, T: int, b: int, P: int) -> dict[str, torch.Tensor]:
    spec, _ = layout(T, b, P)
    views = {}
    for name, (off, dtype, n) in spec.items():
        v = buf[off: off + n * dtype.itemsize].view(dtype)
        views[name] = v.view(b, P) if name == "page_table" else v
    return views


@dataclass
class PackedStep:
    """A step's metadata on the device: the SequenceInfo views and the temperature view [b]."""

    info: SequenceInfo
    temperature: torch.Tensor  # [b] float32; 0 = greedy
    num_real: int  # sequences before padding
    token_source: torch.Tensor | None = None  # [T] int64: -1, or the prev_tokens row of a placeholder


class MetadataBuffers:
    """Pinned host + device byte buffers sized for the largest step; views cached per shape."""

    def __init__(self, max_tokens: int, max_seqs: int, max_pages: int, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.max_tokens, self.max_seqs, self.max_pages = max_tokens, max_seqs, max_pages
        _, nbytes = layout(max_tokens, max_seqs, max_pages)
        pin = self.device.type == "cuda"
        self.host = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pin)
        self.dev = torch.zeros(nbytes, dtype=torch.uint8, device=self.device)
        self._host_np = self.host.numpy()
        self._host_views: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}
        self._dev_views: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}
        self._spans: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (dst, src) of the copy
        # The pinned buffer is rewritten every step: wait until the previous copy has read it.
        self._copied = torch.cuda.Event() if pin else None
        self.copies = 0  # host-to-device copies issued (one per step)
        # the previous step's sampled tokens, where a graph's token_source reads them (fixed address)
        self.prev_tokens = torch.zeros(max_seqs, dtype=torch.int64, device=self.device)

    def _shape_views(self, key: tuple[int, int, int]):
        if key not in self._dev_views:
            T, b, P = key
            spec, _ = layout(T, b, P)
            host = {}
            for name, (off, dtype, n) in spec.items():
                np_dtype = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32}[dtype]
                arr = self._host_np[off: off + n * np.dtype(np_dtype).itemsize].view(np_dtype)
                host[name] = arr.reshape(b, P) if name == "page_table" else arr
            self._host_views[key] = host
            self._dev_views[key] = _views(self.dev, T, b, P)
            nbytes = layout(T, b, P)[1]
            self._spans[key] = (self.dev[:nbytes], self.host[:nbytes])
        return self._host_views[key], self._dev_views[key]

    def pack(
        self,
        info: SequenceInfo,
        temperature: torch.Tensor | list[float] | None = None,
        *,
        pad_to: int | None = None,
        pad_page: int = 0,
        page_cols: int | None = None,
        token_source: torch.Tensor | None = None,
    ) -> PackedStep:
        """Write `info` (host tensors) into the pinned buffer, copy once, return device views.

        pad_to: append B - b = pad_to - b one-token padding sequences (CUDA-graph buckets; and
                torch.compile, which would otherwise specialize a graph for b = 1 or T = 1).
        page_cols: page-table width on the device (CUDA graphs need the same width every step).
        token_source: [T] host int64 (module docstring); None: every token is in input_ids.
        """
        b, T = info.num_seqs, info.num_tokens
        B = pad_to or b
        if B < b:
            raise ValueError(f"cannot pad {b} sequences down to {B}")
        T_pad = T + (B - b)
        w = int(info.page_table.shape[1])
        P = page_cols or w
        if P < w:
            raise ValueError(f"page table of width {w} does not fit {P} columns")
        if T_pad > self.max_tokens or B > self.max_seqs or P > self.max_pages:
            raise ValueError(f"step (T={T_pad}, b={B}, P={P}) exceeds buffers ({self.max_tokens}, {self.max_seqs}, {self.max_pages})")
        if self._copied is not None:
            self._copied.synchronize()
        key = (T_pad, B, P)
        host, dev = self._shape_views(key)
        _fill_host(host, info, temperature, b, B, P, pad_page)
        host["token_source"][:T] = -1 if token_source is None else _np(token_source)
        host["token_source"][T:] = -1
        dst, src = self._spans[key]
        dst.copy_(src, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        self.copies += 1
        packed = SequenceInfo(
            **{name: dev[name] for name in _FIELDS},
            num_prefill=info.num_prefill,
            num_decode=info.num_decode + (B - b),
            page_size=info.page_size,
        )
        return PackedStep(packed, dev["temperature"], b, dev["token_source"])


    def pack_device(self, info: SequenceInfo, *, pad_to: int | None = None, pad_page: int = 0,
                    page_cols: int | None = None) -> PackedStep:
        """The same views and padding as pack(), filled from a SequenceInfo already on the device.

        Device-to-device copies and fills (about 20 small kernels, no host sync): the fallback
        when the caller built its metadata on the device instead of the host."""
        b, T = info.num_seqs, info.num_tokens
        B = pad_to or b
        if B < b:
            raise ValueError(f"cannot pad {b} sequences down to {B}")
        w = int(info.page_table.shape[1])
        P = page_cols or w
        T_pad = T + (B - b)
        if T_pad > self.max_tokens or B > self.max_seqs or P > self.max_pages or P < w:
            raise ValueError(f"step (T={T_pad}, b={B}, P={P}) does not fit the buffers")
        _, dev = self._shape_views((T_pad, B, P))
        for name in ("input_ids", "position_ids", "slot_mapping"):
            dev[name][:T].copy_(getattr(info, name), non_blocking=True)
        for name in ("last_token_idx", "seq_lens", "input_pos", "cache_lens"):
            dev[name][:b].copy_(getattr(info, name), non_blocking=True)
        dev["cu_seqlens"][: b + 1].copy_(info.cu_seqlens, non_blocking=True)
        dev["page_table"][:b, :w].copy_(info.page_table, non_blocking=True)
        dev["page_table"][:b, w:].zero_()
        dev["temperature"].zero_()
        dev["token_source"].fill_(-1)
        if B > b:
            n = B - b
            steps = torch.arange(1, n + 1, device=self.device, dtype=torch.int32)  # [n]
            dev["input_ids"][T:].zero_()
            dev["position_ids"][T:].zero_()
            dev["slot_mapping"][T:].fill_(pad_page * info.page_size)
            dev["last_token_idx"][b:].copy_(steps.long() + (T - 1))
            dev["seq_lens"][b:].fill_(1)
            torch.add(steps, info.cu_seqlens[b:b + 1].to(self.device), out=dev["cu_seqlens"][b + 1:])
            dev["input_pos"][b:].zero_()
            dev["cache_lens"][b:].fill_(1)
            dev["page_table"][b:].fill_(pad_page)
        packed = SequenceInfo(
            **{name: dev[name] for name in _FIELDS},
            num_prefill=info.num_prefill,
            num_decode=info.num_decode + (B - b),
            page_size=info.page_size,
        )
        return PackedStep(packed, dev["temperature"], b, dev["token_source"])


_FIELDS = ("input_ids", "position_ids", "seq_lens", "cu_seqlens", "input_pos", "cache_lens",
           "page_table", "slot_mapping", "last_token_idx")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def _fill_host(host, info: SequenceInfo, temperature, b: int, B: int, P: int, pad_page: int) -> None:
    """Real sequences first, then B - b one-token padding sequences that read and write only `pad_page`."""
    T = info.num_tokens
    ps = info.page_size
    host["input_ids"][:T] = _np(info.input_ids)
    host["position_ids"][:T] = _np(info.position_ids)
    host["slot_mapping"][:T] = _np(info.slot_mapping)
    host["last_token_idx"][:b] = _np(info.last_token_idx)
    host["seq_lens"][:b] = _np(info.seq_lens)
    host["cu_seqlens"][: b + 1] = _np(info.cu_seqlens)
    host["input_pos"][:b] = _np(info.input_pos)
    host["cache_lens"][:b] = _np(info.cache_lens)
    w = int(info.page_table.shape[1])
    host["page_table"][:b, :w] = _np(info.page_table)
    host["page_table"][:b, w:] = 0
    if temperature is None:
        host["temperature"][:b] = 0.0
    else:
        host["temperature"][:b] = _np(torch.as_tensor(temperature, dtype=torch.float32))
    if B > b:
        n = B - b
        host["input_ids"][T:] = 0
        host["position_ids"][T:] = 0
        host["slot_mapping"][T:] = pad_page * ps  # offset 0 of the pad page
        host["last_token_idx"][b:] = np.arange(T, T + n)
        host["seq_lens"][b:] = 1
        host["cu_seqlens"][b + 1:] = host["cu_seqlens"][b] + np.arange(1, n + 1)
        host["input_pos"][b:] = 0
        host["cache_lens"][b:] = 1
        host["page_table"][b:] = pad_page
        host["temperature"][b:] = 0.0
