"""One-shot all-reduce through symmetric memory: the small all-reduces of tensor-parallel decode.

At batch-1 decode a tensor-parallel Llama all-reduces a [1, hidden] activation twice per layer
(8 KB for an 8B model): 64 collectives per step whose cost is latency, not bandwidth. Through NCCL
inside a CUDA graph each took ~23 us on two NVLink H100s (BENCHMARKS.md, issue 7). A one-shot
all-reduce over peer memory is one kernel: copy x into this rank's slot of a buffer every rank can
address (torch symmetric memory), a barrier through signal pads, each rank sums every peer's copy
over NVLink loads, a second barrier so no rank overwrites its slot while a peer still reads it.
No multicast (NVLS) is involved: plain peer loads.

    setup(mode, max_bytes)   collective, after the process group exists: allocate + rendezvous one
                             buffer; every rank agrees (MIN over the control group) on using it
    try_all_reduce(x)        the sum over ranks, or None when x doesn't qualify (not CUDA, dtype
                             other than bf16 / fp32, larger than the buffer, odd byte count): the
                             caller then uses NCCL

Messages larger than `max_bytes` (prefill) go to NCCL, whose ring/tree beats reading every peer's
whole tensor once messages reach the hundreds of KB. `mode`: "auto" tries symmetric memory and
falls back to NCCL with a warning if it cannot be set up; "nccl" never tries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

DTYPES = (torch.bfloat16, torch.float32)  # what torch's one-shot kernel dispatches on
DEFAULT_MAX_BYTES = 512 * 1024  # decode up to 64 rows of an 8B model's 4096 bf16 hidden


@dataclass
class _Buffer:
    flat: Tensor  # [max_bytes] uint8 in symmetric memory
    group_name: str


_BUFFER: Optional[_Buffer] = None


def active() -> bool:
    return _BUFFER is not None


def setup(mode: str, max_bytes: int, device: torch.device, control_group) -> bool:
    """Collective over the default group: every rank calls it at the same point. True when the
    one-shot path is on for every rank; False (NCCL for everything) otherwise."""
    global _BUFFER
    _BUFFER = None
    if mode == "nccl" or device.type != "cuda" or max_bytes <= 0:
        return False
    buf, why = _allocate(max_bytes, device)
    ok = torch.tensor([1 if buf is not None else 0], dtype=torch.int64)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=control_group)  # one rank failing turns it off for all
    if int(ok.item()) == 0:
        log.warning("symmetric-memory all-reduce unavailable (%s); all-reduces use NCCL",
                    why or "another rank could not set it up")
        return False
    _BUFFER = buf
    log.info("all-reduces of <= %d bytes: one-shot over symmetric memory", max_bytes)
    return True


def _allocate(max_bytes: int, device: torch.device) -> tuple[Optional[_Buffer], Optional[str]]:
    try:
        import torch.distributed._symmetric_memory as symm_mem

        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy"):
            return None, "this torch has no symm_mem::one_shot_all_reduce_copy"
        group_name = dist.group.WORLD.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed by older torch, a no-op after
            try:
                symm_mem.enable_symm_mem_for_group(group_name)
            except Exception:  # noqa: BLE001 (deprecated forms may refuse; rendezvous decides)
                log.debug("enable_symm_mem_for_group failed", exc_info=True)
        flat = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
        symm_mem.rendezvous(flat, group_name)
        return _Buffer(flat, group_name), None
    except Exception as e:  # noqa: BLE001 (no P2P, no driver support, ...: NCCL still works)
        return None, f"{type(e).__name__}: {e}"


def qualifies(x: Tensor) -> bool:
    nbytes = x.numel() * x.element_size()
    return (_BUFFER is not None and x.is_cuda and x.dtype in DTYPES and 0 < nbytes <= _BUFFER.flat.numel()
            and nbytes % 4 == 0)


def try_all_reduce(x: Tensor) -> Optional[Tensor]:
    """x [...] -> sum over ranks [...] (a new tensor), or None when NCCL should take it."""
    if not qualifies(x):
        return None
    x = x.contiguous()
    # the symmetric buffer, viewed as x: same storage (rendezvous finds it by its base pointer)
    slot = _BUFFER.flat[: x.numel() * x.element_size()].view(x.dtype).view(x.shape)
    return torch.ops.symm_mem.one_shot_all_reduce_copy(slot, x, "sum", _BUFFER.group_name)


def reset() -> None:
    global _BUFFER
    _BUFFER = None
