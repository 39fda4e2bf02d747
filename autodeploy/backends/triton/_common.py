"""Shared helpers of the Triton kernels: where they can run, dtype checks, launch sizing."""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

# dtypes every kernel accepts; compute is fp32 inside the kernels whatever the storage dtype.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _probe_kernel(x_ptr):
    tl.store(x_ptr, 1.0)


@functools.lru_cache(maxsize=None)
def interpreted() -> bool:
    """True when this package's kernels were defined under TRITON_INTERPRET=1 (they then run on CPU)."""
    return type(_probe_kernel).__name__ == "InterpretedFunction"


def can_run_on(device: torch.device) -> bool:
    """Compiled kernels need CUDA; interpreted ones take CPU tensors (and only those)."""
    return device.type == "cpu" if interpreted() else device.type == "cuda"


def on_cuda(device) -> bool:
    """Is `device` (a torch.device or its name) a CUDA device? The `supports` of backends registered for
    the GPU only: the unfused candidates time launches there, and the CPU has the torch reference."""
    return torch.device(device).type == "cuda"


def unsupported_device_or_dtype(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """None when every tensor is on a device the kernels run on with a supported dtype, else why not."""
    for t in tensors:
        if t is None:
            continue
        if not can_run_on(t.device):
            mode = "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled"
            return f"{mode} Triton kernels cannot run on {t.device.type} tensors"
        if t.is_floating_point() and t.dtype not in DTYPES:
            return f"dtype {t.dtype} is not one of {DTYPES}"
    return None


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill; the interpreter gets a small fixed count so tests hit split-K."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not silently drop to tf32 (10-bit mantissa) inside tl.dot."""
    return "ieee" if dtype == torch.float32 else "tf32"


# {device: zeroed int32 counters}; each launch leaves them at zero, so the layers and graph replays of a
# device share one set (a split-K kernel's "last program merges" tickets: paged_attention_decode_rope.py,
# int4_kmajor_gemv.py). Launches on two streams at once would race on it (the runtime uses one stream).
_TICKETS: dict[torch.device, torch.Tensor] = {}


def tickets(device: torch.device, count: int) -> torch.Tensor:
    """`count` zeroed counters (e.g. one per output tile), kept across launches. Allocated (and zeroed)
    outside CUDA-graph capture by the runtime's warm-up; one allocated during a capture is zeroed by a
    node of that graph and not kept, so eager launches never see its uninitialized memory."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # one key per GPU: "cuda" is "cuda:0"
    buf = _TICKETS.get(device)
    if buf is not None and buf.numel() >= count:
        return buf
    buf = torch.zeros(max(count, 1024), dtype=torch.int32, device=device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if not capturing:
        _TICKETS[device] = buf
    return buf


def unit_stride(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dim is unit-stride (what every kernel's row loads assume), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """[..., h] -> [M, h], unit-stride on h; no copy when it already is and the leading dims flatten."""
    x = unit_stride(x)
    return x.reshape(-1, x.shape[-1])


def int4_operands_problem(x: torch.Tensor, k: int, n: int, group_size: int, scales: torch.Tensor,
                          zeros: torch.Tensor, scale_shape: tuple, bias: Optional[torch.Tensor]) -> Optional[str]:
    """What the int4 kernels of both layouts require of x, the group size, scales / zeros (scale_shape:
    the layout's [N, K/g] or [K/g, N]) and the bias, given the weight's K and N; None when all hold."""
    if x.shape[-1] != k:
        return f"x has {x.shape[-1]} input channels, the weight {k}"
    if group_size < 16 or group_size & (group_size - 1) or k % group_size:
        return f"group size {group_size} must be a power of two >= 16 dividing K"
    for name, t in (("scales", scales), ("zeros", zeros)):
        if tuple(t.shape) != tuple(scale_shape):
            return f"{name} must be {list(scale_shape)}, got {list(t.shape)}"
    if bias is not None and bias.shape != (n,):
        return f"bias must be [{n}]"
    return None


# ---- programmatic dependent launch (Hopper) -----------------------------------------------------
# In a CUDA graph the decode kernels run back to back, each waiting for the previous one to finish
# and then paying its own launch (block scheduling, prologue: ~1-2 us each, ~100 per 1B step).
# With PDL a kernel is launched while its predecessor still runs; its programs start, signal that
# their own dependents may launch, then wait (griddepcontrol.wait) until the predecessor's grid
# has completed and its writes are visible. Every PDL kernel waits before its first load or store of
# anything a kernel of the step may write, so the stream's order still holds for everything it reads or
# writes (a kernel completes only after its wait returned, i.e. after its predecessor completed). Read
# before the wait, because nothing in the step writes them: weights (the prefetch below, fp8_gemv's
# weight scales, the norm weights), and in paged_attention_decode_rope.py the step's metadata (context
# lengths, page table: copied before the step's first kernel, and the PDL kernels of a step start only
# after the last non-PDL kernel before them has completed) and the KV-cache rows of earlier steps.
# On by default on sm_90+ (compiled kernels only): measured on the H100 (BENCHMARKS.md, fourth session)
# 1B batch 1 +1.5-5%, 8B bf16 +1.5%, 8B FP8 +3%, greedy parity unchanged. AUTODEPLOY_PDL=0 turns it off.


@functools.lru_cache(maxsize=None)
def pdl_enabled(device: torch.device) -> bool:
    if os.environ.get("AUTODEPLOY_PDL", "1") != "1" or interpreted() or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_launch(device: torch.device) -> dict:
    """Launch kwargs of a kernel that calls pdl_wait_and_release(PDL=True) first."""
    return {"launch_pdl": True} if pdl_enabled(device) else {}


# ---- weight prefetch while the previous kernel finishes (PDL only) ------------------------------------
# A GEMV program's first weight tile is a DRAM round trip (~1 us) that it used to start only after
# griddepcontrol.wait, i.e. with the memory system idle between two kernels of the step. Weights are
# never written during a step, so a PDL GEMV asks L2 for its first tiles before it waits: the lines
# arrive during its predecessor's tail, and its first loads hit L2. Only read-only weights are
# prefetched; x, outputs, partials and tickets are still touched after the wait. Launchers pass
# PF_LINES (128-byte lines per weight row; 0 = off, as in the interpreter or without PDL) and PF_STEP
# (elements per line). AUTODEPLOY_PDL_PREFETCH=0 turns it off (the autotune key records it).


@functools.lru_cache(maxsize=None)  # per launch at decode, like pdl_enabled
def pdl_prefetch_enabled(device: torch.device) -> bool:
    return pdl_enabled(device) and os.environ.get("AUTODEPLOY_PDL_PREFETCH", "1") == "1"


def pdl_prefetch_meta(device: torch.device, row_elems: int, element_size: int, max_lines: int = 4) -> dict:
    """PF_LINES / PF_STEP for a kernel prefetching the first `row_elems` elements of each weight row."""
    step = 128 // element_size
    lines = min(max_lines, max(1, row_elems // step)) if pdl_prefetch_enabled(device) else 0
    return dict(PF_LINES=triton.next_power_of_2(lines) if lines else 0, PF_STEP=step)


@triton.jit
def prefetch_l2_keep(ptrs):
    """prefetch_l2 with the lines marked evict_last in L2: data read again every step (the KV cache), so
    that the weights streaming through L2 evict other lines first."""
    tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def prefetch_l2(ptrs):
    """Ask L2 for the 128-byte line of each pointer: no registers, no wait, no fault on the load path."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows(row_ptrs, PF_LINES: tl.constexpr, PF_STEP: tl.constexpr):
    """row_ptrs [R] (each a valid row start): the first PF_LINES lines of every row into L2 (PF_LINES > 0)."""
    prefetch_l2(row_ptrs[:, None] + (tl.arange(0, PF_LINES) * PF_STEP)[None, :])


@triton.jit
def pdl_wait_and_release(PDL: tl.constexpr):
    """First statement of a PDL kernel (after its weight prefetch, if any): let the next kernel launch,
    wait for the previous one."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
