"""CompiledModel: CachedModel's `forward(info) -> logits [b, V]`, through torch.compile and CUDA graphs.

    backend        prefill / mixed steps                 decode steps (b <= largest bucket)
    eager          graph as is                           graph as is
    torch-compile  torch.compile(graph, dynamic=True)    same
    cuda-graph     torch.compile(graph, dynamic=True)    CUDA graph of bucket B >= b, replayed
                   (runtime.torch_compile false: the graph as is, and captured as is)

Every step's metadata reaches the device in one copy (metadata.py). A CUDA graph is captured per
bucket B >= 2 over fixed buffers: the metadata views of shape (T=B, b=B, P=max_pages) and the KV
caches. A decode step of b sequences is padded to B with one-token sequences that decode into
the last page of the pool, which this wrapper keeps out of the engine's reach (`num_pages` is
one less than the cache holds), so padding never writes a live request's KV. Compiled steps of
one sequence (or one token) get one such padding sequence too: with every dim >= 2, dynamo's
0/1 specialization never triggers, and one compiled graph serves prefill, mixed and decode.

Custom ops stay opaque to torch.compile (their fake impls give shapes); Inductor fuses the aten
ops between them. The returned logits of a replayed graph are a view of its static output: valid
until the next forward, which is how the engine uses them (it samples before the next step).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from autodeploy.graph_capture import capture
from autodeploy.runtime.compile.buckets import bucket_for, is_decode_only, normalize_buckets
from autodeploy.runtime.compile.fallbacks import register_fallbacks
from autodeploy.runtime.compile.metadata import MetadataBuffers, PackedStep
from autodeploy.runtime.cached_model import substitute_tokens_
from autodeploy.runtime.sequence_info import SequenceInfo

log = logging.getLogger(__name__)

BACKENDS = ("eager", "torch-compile", "cuda-graph")


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # [B, V] float32, the graph's static output


class CompiledModel:
    """Wraps a CachedModel (gm, caches, num_pages, page_size, device) with the same forward(info)."""

    def __init__(
        self,
        cached,
        backend: str = "eager",
        *,
        batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
        max_batch_size: int = 8,
        max_num_tokens: int = 2048,
        max_seq_len: int = 2048,
        capture: bool = True,
        torch_compile: bool = True,
        compile_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown compile backend {backend!r} (one of {', '.join(BACKENDS)})")
        self.cached = cached
        self.backend = backend
        self.device = torch.device(cached.device)
        self.page_size = cached.page_size
        self.use_graphs = backend == "cuda-graph" and self.device.type == "cuda"
        if backend == "cuda-graph" and not self.use_graphs:
            log.warning("cuda-graph backend on %s: CUDA graphs need a GPU; running %s only", self.device,
                        "torch.compile" if torch_compile else "the graph as is")
        # the last page belongs to padding sequences (CUDA-graph buckets, b >= 2 under torch.compile),
        # never to a request: the engine sees one page fewer
        padded = backend != "eager"
        if padded and cached.num_pages < 2:
            raise ValueError(f"the {backend} backend needs a KV pool of at least 2 pages (one is its padding page)")
        self.pad_page = cached.num_pages - 1 if padded else 0
        self.num_pages = cached.num_pages - 1 if padded else cached.num_pages
        self.max_pages = max(2, -(-max_seq_len // self.page_size))  # >= 2: see forward()
        self.torch_compile = backend == "torch-compile" or (backend == "cuda-graph" and torch_compile)
        # Under torch.compile no bucket of 1: a batch of one replays bucket 2, so the compiled graph never
        # specializes for b = 1. A graph captured as is (torch_compile false, the GPU recipes) has no such
        # specialization, and there a batch of one replays bucket 1: the padding row is not free everywhere
        # (the K-major INT4 GEMV spends an FMA chain per row and weight: 3.7 instead of 2.7 instructions a
        # weight with the second row).
        low = 2 if self.torch_compile else 1
        self.buckets = sorted({max(low, s) for s in normalize_buckets(batch_sizes, max_batch_size)}) if self.use_graphs else []
        if self.device.type == "cuda":
            from autodeploy.transforms.select_backends import select_cache_op_backends

            # the reference cached attention syncs with the host: no CUDA graph could hold it
            self.triton_cache_ops = select_cache_op_backends(cached.gm, self.device)
        top = max(self.buckets, default=1)
        # + 1: a compiled step of one sequence carries one padding sequence (see forward())
        self.meta = MetadataBuffers(max(max_num_tokens + 1, top), max(max_batch_size + 1, top), self.max_pages,
                                    self.device)
        if not self.torch_compile:
            self.fn = cached.gm
        else:
            self.fn = (compile_fn or _default_compile)(cached.gm)
        self.graphs: dict[int, _Captured] = {}
        # the engine builds SequenceInfo here: on the host, so pack() moves it in one copy
        self.metadata_device = torch.device("cpu")
        self.capture_seconds = 0.0
        self.capture_breakdown: dict[str, float] = {}  # "prefill" / "b<B>" -> seconds (optimize-time report)
        self.replays = 0  # decode steps served by a CUDA graph
        self._warned_device_info = False
        if self.use_graphs and capture:
            self.capture()

    # ---- running -------------------------------------------------------------------------------
    def _run(self, info: SequenceInfo) -> torch.Tensor:
        return self.fn(*info.graph_inputs(), *self.cached.caches).float()  # [b, V]

    def pack(self, info: SequenceInfo, pad_to: int | None = None, page_cols: int | None = None) -> PackedStep:
        """The step's metadata in the fixed device buffers: one copy from the host, or (when the
        caller built it on the device) device-side copies with the same layout and padding."""
        if info.input_ids.device.type == "cpu" or self.device.type == "cpu":
            host = info if info.input_ids.device.type == "cpu" else info.to("cpu")
            return self.meta.pack(host, pad_to=pad_to, pad_page=self.pad_page, page_cols=page_cols)
        if not self._warned_device_info:
            log.info("SequenceInfo built on %s: copied on the device (build it on the host for one copy per step)",
                     info.input_ids.device)
            self._warned_device_info = True
        return self.meta.pack_device(info, pad_to=pad_to, pad_page=self.pad_page, page_cols=page_cols)

    accepts_token_source = True  # forward() can take next-step input ids from the device

    def _packed(self, info: SequenceInfo, token_source, **pad) -> PackedStep:
        packed = self.pack(info, **pad)
        if token_source is not None:
            # placeholders of the overlapped engine: tokens the previous step sampled, still on
            # the device, go into the fixed input_ids buffer the graph reads (no host round trip)
            prev, source = token_source
            if source.device.type == "cpu" and self.device.type == "cuda":
                source = source.pin_memory().to(self.device, non_blocking=True)
            substitute_tokens_(packed.info.input_ids[: info.num_tokens], prev, source)
        return packed

    def _packed_for_graph(self, info: SequenceInfo, token_source, B: int) -> PackedStep:
        """_packed for a replay: the placeholders' rows go into the metadata copy as token_source and the
        previous step's tokens into the fixed prev_tokens buffer (one device copy); the graph substitutes
        them itself (_graph_step) instead of ~6 eager launches between replays (with the sampler's one-launch
        argmax: 62 -> 32 us between an 8B FP8 step's replays on an H200, BENCHMARKS.md eighth session)."""
        source = None if token_source is None else token_source[1]
        if info.input_ids.device.type != "cpu" or (source is not None and source.device.type != "cpu"):
            # built on the device: the eager substitution of _packed (the graph then finds no placeholder rows)
            return self._packed(info, token_source, pad_to=B, page_cols=self.max_pages)
        if token_source is not None:
            prev = token_source[0]  # [n] <= max_batch_size rows: prev_tokens holds max_seqs
            self.meta.prev_tokens[: prev.numel()].copy_(prev.reshape(-1), non_blocking=True)
        return self.meta.pack(info, pad_to=B, pad_page=self.pad_page, page_cols=self.max_pages, token_source=source)

    def _graph_step(self, packed: PackedStep) -> torch.Tensor:
        """What a decode CUDA graph holds: token t's input id becomes prev_tokens[token_source[t]] where that
        is >= 0 (the overlapped engine's placeholders), then the model."""
        substitute_tokens_(packed.info.input_ids, self.meta.prev_tokens, packed.token_source)  # one launch on CUDA
        return self._run(packed.info)

    @torch.inference_mode()
    def forward(self, info: SequenceInfo, token_source: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The step's last-token logits [b, V] (float32), KV caches updated.

        token_source = (prev_tokens [n], source [T]): see CachedModel.forward."""
        if info.page_size != self.page_size:
            raise ValueError(f"SequenceInfo has page_size {info.page_size}, the cache {self.page_size}")
        b = info.num_seqs
        if self.graphs and is_decode_only(info.num_prefill, info.num_tokens, b):
            B = bucket_for(b, self.buckets)
            captured = self.graphs.get(B) if B is not None else None
            if captured is not None:
                self._packed_for_graph(info, token_source, B)
                captured.graph.replay()
                self.replays += 1
                return captured.logits[:b]
        if self.backend == "eager":
            return self._run(self._packed(info, token_source).info)
        # Compiled: keep every step dim >= 2 (one padding sequence where b or T is 1, two page
        # columns at least), so dynamo's 0/1 specialization never compiles a second graph.
        pad = b + 1 if b < 2 or info.num_tokens < 2 else None
        cols = max(2, int(info.page_table.shape[1]))
        logits = self._run(self._packed(info, token_source, pad_to=pad, page_cols=cols).info)
        return logits[:b] if pad else logits

    __call__ = forward

    # ---- capture -------------------------------------------------------------------------------
    def _pad_step(self, B: int) -> SequenceInfo:
        """B decodes that read and write only the padding page: what capture runs on."""
        chunks = [([0], 0, [self.pad_page])] * B
        return SequenceInfo.build(chunks, self.page_size, num_prefill=0)

    @torch.inference_mode()
    def warmup_prefill(self, num_tokens: int | None = None) -> None:
        """Compile the prefill (dynamic T) graph now rather than on the first request."""
        T = max(2, min(num_tokens or self.page_size, self.page_size))
        info = SequenceInfo.build([(list(range(T)), 0, [self.pad_page])], self.page_size, num_prefill=1)
        self.forward(info)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one CUDA graph per bucket, largest first (they share one memory pool)."""
        t0 = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        if self.page_size >= 2:
            self.warmup_prefill()
        self.capture_breakdown["prefill"] = time.perf_counter() - t0
        for B in sorted(self.buckets, reverse=True):
            tb = time.perf_counter()
            packed = self.pack(self._pad_step(B), pad_to=B, page_cols=self.max_pages)
            try:
                # warm up off the capture: compiles this shape, initializes cuBLAS / Triton
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        self._graph_step(packed)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph, logits = capture(lambda: self._graph_step(packed), self.device, pool=pool, stream=stream)
                self.graphs[B] = _Captured(graph, logits)
            except Exception as e:  # e.g. an op that syncs with the host: that bucket runs uncaptured
                log.warning("CUDA graph capture of decode batch %d failed (%s): it runs without a graph",
                            B, str(e).splitlines()[0] if str(e) else type(e).__name__)
                torch.cuda.synchronize(self.device)
            self.capture_breakdown[f"b{B}"] = time.perf_counter() - tb
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0

    # ---- what the engine reads -----------------------------------------------------------------
    @property
    def caches(self) -> list[torch.Tensor]:
        return self.cached.caches

    @property
    def bytes_per_page(self) -> int:
        return self.cached.bytes_per_page

    @property
    def num_layers(self) -> int:
        return self.cached.num_layers


def _default_compile(gm):
    """torch.compile with every step dim symbolic: one graph serves any T / b / P.

    Duck sizing is off while dynamo traces: it would merge dims that happen to be equal on the
    first call (b == n_kv == 2) and recompile when they part.
    """
    from torch.fx.experimental import _config as fx_config

    register_fallbacks(gm)  # before Inductor meets the custom ops (fallbacks.py: why)
    compiled = torch.compile(gm, dynamic=True)

    def run(*args):
        # a plain attribute toggle: config.patch() costs ~100 us a call, this a few
        prev = fx_config.use_duck_shape
        fx_config.use_duck_shape = False
        try:
            return compiled(*args)
        finally:
            fx_config.use_duck_shape = prev

    return run


def compile_model(cached, runtime_config) -> Any:
    """The model the engine runs, for recipe.runtime.compile_backend (eager on the CPU stays CachedModel)."""
    rt = runtime_config
    backend = rt.compile_backend
    if isinstance(cached, CompiledModel):
        return cached
    if not hasattr(cached, "caches") or not hasattr(cached, "gm"):
        log.warning("compile backend %s skipped: the graph has no KV cache (insert_kv_cache did not run)", backend)
        return cached
    if backend == "eager" and torch.device(cached.device).type == "cpu":
        return cached
    return CompiledModel(
        cached, backend, batch_sizes=rt.cuda_graph_batch_sizes, max_batch_size=rt.max_batch_size,
        max_num_tokens=rt.max_num_tokens, max_seq_len=rt.max_seq_len, torch_compile=rt.torch_compile,
    )
