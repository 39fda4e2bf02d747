"""Runtime: the user-facing surface over the engine.

    rt.generate(prompts, SamplingParams(...))    all prompts batched in flight, outputs in order
    h = rt.submit("Hello", SamplingParams(...))  a handle; `for d in h` / `async for d in h`
                                                 streams StreamDelta pieces; h.result()
    rt.cancel(h)                                 pages freed at once; the stream ends "cancelled"
    rt.chat(messages)                            the model's chat template, then generate
    rt.metrics()                                 KV pages used / free / cached, prefix hits, queue

There is no background thread: whoever waits on a handle (or calls generate) drives the engine
one step at a time under a lock, and each step advances every request in flight. Async
iteration runs the steps in a worker thread so the event loop stays free meanwhile.

The model behind the engine is the CachedModel when the graph was cache-inserted; otherwise the
uncached graph recomputes each sequence's full history every step (the correctness baseline,
O(n^2)), behind the same paged interface.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Sequence

import torch
from torch import fx

from autodeploy.errors import RequestError
from autodeploy.runtime.engine import Engine, EngineConfig
from autodeploy.runtime.outputs import RequestOutput, StreamDelta
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.runtime.sequence_info import SequenceInfo

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]


class RecomputeModel:
    """The uncached graph behind the paged interface: keeps token ids per KV slot and re-runs each
    sequence's whole history through `gm(input_ids [1, n], position_ids [1, n])` every step."""

    def __init__(self, gm: fx.GraphModule, num_pages: int, page_size: int, device: torch.device | str = "cpu"):
        self.gm, self.num_pages, self.page_size = gm, num_pages, page_size
        self.device = torch.device(device)
        self.bytes_per_page = page_size * 8
        self.tokens = torch.zeros(num_pages * page_size, dtype=torch.long)  # token id per slot

    @torch.inference_mode()
    def forward(self, info: SequenceInfo) -> torch.Tensor:
        info = info.to("cpu")
        self.tokens[info.slot_mapping] = info.input_ids
        ps, rows = self.page_size, []
        for i in range(info.num_seqs):
            n = int(info.cache_lens[i])
            pages = info.page_table[i, : -(-n // ps)].long()
            ids = self.tokens[(pages[:, None] * ps + torch.arange(ps)).flatten()[:n]]  # [n]
            pos = torch.arange(n)
            rows.append(self.gm(ids[None].to(self.device), pos[None].to(self.device))[0, -1].float())
        return torch.stack(rows)  # [b, V]


class RequestHandle:
    """One submitted request: iterate it (sync or async) for StreamDelta pieces, or wait for `result()`."""

    def __init__(self, runtime: "Runtime", request: Request):
        self._rt = runtime
        self.request = request

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def done(self) -> bool:
        return self.request.finished

    def __iter__(self) -> Iterator[StreamDelta]:
        events = self.request.events
        while True:
            while events:
                delta = events.popleft()
                yield delta
                if delta.finished:
                    return
            self._rt._advance(self.request)

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[StreamDelta]:
        events = self.request.events
        while True:
            while events:
                delta = events.popleft()
                yield delta
                if delta.finished:
                    return
            await asyncio.to_thread(self._rt._advance, self.request)

    def result(self) -> RequestOutput:
        """Run until the request ends; the stream's unread pieces are dropped."""
        while not self.request.finished:
            self._rt._advance(self.request, for_events=False)
        self.request.events.clear()
        return self.request.output()

    async def aresult(self) -> RequestOutput:
        while not self.request.finished:
            await asyncio.to_thread(self._rt._advance, self.request, False)
        self.request.events.clear()
        return self.request.output()

    def cancel(self) -> bool:
        return self._rt.cancel(self)


def _default_num_pages(rcfg: Any, bytes_per_page: int | None, device: torch.device) -> int:
    """Pages from the recipe: kv_num_pages, else kv_memory_gb / bytes_per_page, else free memory."""
    if rcfg.kv_num_pages is not None:
        return rcfg.kv_num_pages
    full = rcfg.max_batch_size * -(-rcfg.max_seq_len // rcfg.kv_page_size)  # every slot at max_seq_len
    if bytes_per_page is None:
        return full
    if rcfg.kv_memory_gb is not None:
        return max(1, int(rcfg.kv_memory_gb * 1024**3) // bytes_per_page)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * 0.9) // bytes_per_page)  # leave room for activations
    return full


def graph_has_kv_cache(gm: fx.GraphModule) -> bool:
    """Whether insert_kv_cache rewrote the graph (it then reads SequenceInfo and KV caches)."""
    try:
        from autodeploy.runtime.cached_model import has_kv_cache
    except ImportError:  # a build without the cached path: every graph is uncached
        return False
    return has_kv_cache(gm)


def build_paged_model(gm: fx.GraphModule, rcfg: Any) -> Any:
    """The CachedModel when insert_kv_cache ran on `gm`, else the recompute adapter; sized by the recipe."""
    device = torch.device(rcfg.device)
    if graph_has_kv_cache(gm):
        from autodeploy.runtime.cached_model import CachedModel, cache_specs
        from autodeploy.runtime.kv_cache import bytes_per_page

        from autodeploy.runtime.compile import compile_model

        from autodeploy.distributed.dist import agree_min

        per_page = bytes_per_page(cache_specs(gm), rcfg.kv_page_size)
        # sharded: every rank holds the pages rank 0 hands out
        cached = CachedModel(gm, agree_min(_default_num_pages(rcfg, per_page, device), rcfg), rcfg.kv_page_size, device)
        return compile_model(cached, rcfg)  # runtime.compile_backend: torch.compile / CUDA graphs (eager CPU: as is)
    return RecomputeModel(gm, _default_num_pages(rcfg, None, device), rcfg.kv_page_size, device)


@dataclass
class Runtime:
    graph_module: fx.GraphModule
    tokenizer: Any
    recipe: Any
    source: Any  # autodeploy.models.source.ModelSource
    hf_config: Any
    report: list = field(default_factory=list)  # TransformInfo per transform
    arch: Any = None
    timings: dict[str, float] = field(default_factory=dict)
    model: Any = None  # the paged model the engine runs; built from the recipe on first use
    scheduler_policy: str | None = None  # "fcfs" / "priority"; None: the recipe's, else fcfs
    _engine: Engine | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    @property
    def device(self) -> torch.device:
        return torch.device(self.recipe.runtime.device)

    @property
    def max_seq_len(self) -> int:
        return self.recipe.runtime.max_seq_len

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            rcfg = self.recipe.runtime
            if self.model is None:
                self.model = build_paged_model(self.graph_module, rcfg)
            cfg = EngineConfig(max_batch_size=rcfg.max_batch_size, max_num_tokens=rcfg.max_num_tokens,
                               max_seq_len=rcfg.max_seq_len, policy=self.scheduler_policy or getattr(rcfg, "scheduler_policy", "fcfs"),
                               enable_prefix_caching=getattr(rcfg, "enable_prefix_caching", False),
                               overlap=getattr(rcfg, "overlap_scheduling", True))
            from autodeploy.distributed.launch import leader_model

            # sharded: rank 0 broadcasts each step to the other ranks (they run launch.follow)
            self._engine = Engine(leader_model(self.model, rcfg), cfg, tokenizer=self.tokenizer, eos_token_ids=self.eos_token_ids(),
                                  vocab_size=self.vocab_size, device=self.device)
        return self._engine

    @property
    def vocab_size(self) -> int | None:
        cfg = self.hf_config.get_text_config() if hasattr(self.hf_config, "get_text_config") else self.hf_config
        return getattr(cfg, "vocab_size", None)

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for holder in (getattr(self.hf_config, "generation_config", None), self.hf_config, self.tokenizer):
            eos = getattr(holder, "eos_token_id", None) if holder is not None else None
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, (list, tuple)):
                ids.update(int(e) for e in eos)
        return ids

    # ---- forward (uncached graphs) -------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """logits [b, s, vocab] for input_ids [b, s] (positions default to 0..s-1); uncached graphs only."""
        if graph_has_kv_cache(self.graph_module):
            raise RequestError("forward(input_ids) needs the uncached graph; this one reads a KV cache (use generate)")
        input_ids = input_ids.to(self.device)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=self.device).expand_as(input_ids)
        return self.graph_module(input_ids, position_ids.to(self.device))

    # ---- tokenization --------------------------------------------------------------------------
    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise RequestError("this model has no tokenizer: give prompts as lists of token ids")
            return list(self.tokenizer.encode(prompt))
        return [int(t) for t in prompt]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def apply_chat_template(self, messages: list[dict[str, str]]) -> list[int]:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template; use generate() with plain prompts")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)

    # ---- requests ------------------------------------------------------------------------------
    def submit(self, request: Request | Prompt, sampling: SamplingParams | None = None, *,
               priority: int = 0, request_id: str | None = None) -> RequestHandle:
        """Queue a request (a Request, prompt text or token ids); a bad one ends at once with `error` set."""
        if not isinstance(request, Request):
            text = request if isinstance(request, str) else None
            try:
                ids, problem = self.encode(request), None
            except (RequestError, TypeError, ValueError) as e:
                ids, problem = [], str(e)
            request = Request(ids, sampling or SamplingParams(), prompt=text, priority=priority,
                              request_id=request_id or "")
        else:
            problem = None
        with self._lock:
            self.engine.add_request(request, problem=problem)
        return RequestHandle(self, request)

    def cancel(self, handle: RequestHandle | str) -> bool:
        """End a request now and free its pages; False if it had already ended."""
        rid = handle if isinstance(handle, str) else handle.request_id
        with self._lock:
            return self.engine.abort(rid)

    def step(self) -> list[Request]:
        """One engine step: every request in flight advances."""
        with self._lock:
            return self.engine.step()

    def _advance(self, req: Request, for_events: bool = True) -> None:
        """One step for `req` unless it has ended, or (for_events) already has something to stream:
        another waiter may have stepped for it meanwhile."""
        with self._lock:
            if req.finished or (for_events and req.events):
                return
            steps = self.engine.num_progress
            self.engine.step()
            if self.engine.num_progress == steps:  # req is unfinished, so the scheduler had work
                raise RuntimeError(f"the engine made no progress on {req.request_id} (scheduler stalled)")

    def metrics(self) -> dict[str, Any]:
        """KV pages used / free / cached, prefix-cache hits, queue length, preemptions, tokens."""
        with self._lock:
            return self.engine.metrics().as_dict()

    # ---- generation ----------------------------------------------------------------------------
    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids), all in flight together; a bad one fails alone."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # a single prompt
        if sampling is None or isinstance(sampling, SamplingParams):
            sampling = [sampling or SamplingParams()] * len(prompts)
        if len(sampling) != len(prompts):
            raise RequestError(f"generate(): {len(sampling)} sampling params for {len(prompts)} prompts")
        handles = [self.submit(p, s) for p, s in zip(prompts, sampling)]
        with self._lock:
            while any(not h.done for h in handles):
                steps = self.engine.num_progress
                self.engine.step()
                if self.engine.num_progress == steps:
                    raise RuntimeError("the engine made no progress (scheduler stalled)")
        return [h.result() for h in handles]

    def chat(self, messages: list[dict[str, str]], sampling: SamplingParams | None = None) -> RequestOutput:
        """One chat turn: the model's chat template applied to `messages`, then generate."""
        return self.generate([self.apply_chat_template(messages)], sampling)[0]
