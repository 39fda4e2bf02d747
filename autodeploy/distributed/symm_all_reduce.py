"""One-shot all-reduce through symmetric memory: the small all-reduces of tensor-parallel decode.

At batch-1 decode a tensor-parallel Llama all-reduces a [1, hidden] activation twice per layer
(8 KB for an 8B model): 64 collectives per step whose cost is latency, not bandwidth. Through NCCL
inside a CUDA graph each took ~23 us on two NVLink H100s (BENCHMARKS.md, issue 7). A one-shot
all-reduce over peer memory is one kernel: copy x into this rank's slot of a buffer every rank can
address (torch symmetric memory), a barrier through signal pads, each rank sums every peer's copy
over NVLink loads, a second barrier so no rank overwrites its slot while a peer still reads it.
No multicast (NVLS) is involved: plain peer loads.

Below that, "auto" sends what it can (<= PUSH_MAX_ROWS rows of <= PUSH_ROW_BYTES) through
backends/triton/push_all_reduce.py instead: each rank stores its rows straight into its peers' buffers
(the values are their own flags), one one-way NVLink trip, and `all_reduce_add_rmsnorm` (the all-reduce
plus the residual add + RMSNorm after it, fused by transforms/fuse_all_reduce_rmsnorm.py) is that kernel
too; `try_linear_all_reduce_add_rmsnorm` lets the projection's GEMV push its own output tiles.
"oneshot" keeps torch's kernel for every small all-reduce (the A/B of the two).

    setup(mode, max_bytes)   collective, after the process group exists: allocate + rendezvous the
                             buffers; every rank agrees (MIN over the control group) on using them
    try_all_reduce(x)        the sum over ranks, or None when x doesn't qualify (not CUDA, dtype
                             other than bf16 / fp32, larger than the buffer, odd byte count): the
                             caller then uses NCCL
    try_all_reduce_add_rmsnorm(x, residual, weight, eps, add_unit_offset)
                             (normed, new_residual) from the push kernel, or None (the caller then
                             all-reduces and normalizes on its own)
    try_all_gather_last(x)   the ranks' x side by side on the last dim (<= 1 MB a rank: decode
                             logits), or None (NCCL)

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
PUSH_MAX_ROWS = 32  # decode batches up to 32 rows take the push kernel (one program a row)
PUSH_ROW_BYTES = 32 * 1024  # a hidden of up to 16384 bf16 values


@dataclass
class _Buffer:
    flat: Tensor  # [max_bytes] uint8 in symmetric memory
    group_name: str


@dataclass
class _Push:
    """push_all_reduce.py's buffer: rows [2, W, PUSH_MAX_ROWS, PUSH_ROW_BYTES] (symmetric memory), all-one bytes
    (empty) where no push waits to be read."""

    flat: Tensor  # uint8, kept alive: the peers write into it
    peers: Tensor  # int64 [W]: every rank's buffer as mapped on this device
    counters: Tensor  # int32 [PUSH_MAX_ROWS]: the epoch of each row slot's last call
    rank: int
    world: int


_BUFFER: Optional[_Buffer] = None
_PUSH: Optional[_Push] = None


def active() -> bool:
    return _BUFFER is not None


def push_active() -> bool:
    return _PUSH is not None


def setup(mode: str, max_bytes: int, device: torch.device, control_group) -> bool:
    """Collective over the default group: every rank calls it at the same point. True when the
    one-shot path is on for every rank; False (NCCL for everything) otherwise."""
    global _BUFFER, _PUSH
    _BUFFER = _PUSH = None
    if mode == "nccl" or device.type != "cuda" or max_bytes <= 0:
        return False
    buf, why = _allocate(max_bytes, device)
    push, push_why = _allocate_push(device) if mode == "auto" and buf is not None else (None, None)
    # every buffer is emptied before this collective returns anywhere: no peer pushes into one first
    ok = torch.tensor([1 if buf is not None else 0, 1 if push is not None else 0], dtype=torch.int64)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=control_group)  # one rank failing turns it off for all
    if int(ok[0]) == 0:
        log.warning("symmetric-memory all-reduce unavailable (%s); all-reduces use NCCL",
                    why or "another rank could not set it up")
        return False
    _BUFFER = buf
    log.info("all-reduces of <= %d bytes: one-shot over symmetric memory", max_bytes)
    if mode == "auto":
        if int(ok[1]):
            _PUSH = push
            log.info("all-reduces of <= %d rows of <= %d bytes: the push kernel", PUSH_MAX_ROWS, PUSH_ROW_BYTES)
        else:
            log.warning("push all-reduce unavailable (%s); small all-reduces use torch's one-shot kernel",
                        push_why or "another rank could not set it up")
    return True


def _allocate_push(device: torch.device) -> tuple[Optional[_Push], Optional[str]]:
    try:
        import torch.distributed._symmetric_memory as symm_mem

        world, rank = dist.get_world_size(), dist.get_rank()
        flat = symm_mem.empty(2 * world * PUSH_MAX_ROWS * PUSH_ROW_BYTES, dtype=torch.uint8, device=device)
        handle = symm_mem.rendezvous(flat, dist.group.WORLD.group_name)
        flat.fill_(255)  # empty (push_all_reduce.py: all-one values are never sent)
        torch.cuda.synchronize(device)
        peers = torch.tensor(list(handle.buffer_ptrs), dtype=torch.int64, device=device)
        counters = torch.zeros(PUSH_MAX_ROWS, dtype=torch.int32, device=device)
        return _Push(flat, peers, counters, rank, world), None
    except Exception as e:  # noqa: BLE001 (no P2P, no Triton, ...: torch's one-shot kernel still works)
        return None, f"{type(e).__name__}: {e}"


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


def _push(x: Tensor, residual: Optional[Tensor] = None, weight: Optional[Tensor] = None, eps: float = 0.0,
          add_unit_offset: bool = False):
    """The push kernel's result, or None when it cannot take these operands (the same on every rank)."""
    if _PUSH is None:
        return None
    from autodeploy.backends.triton import push_all_reduce

    if push_all_reduce.unsupported_reason(x, PUSH_MAX_ROWS, PUSH_ROW_BYTES, residual, weight):
        return None
    p = _PUSH
    return push_all_reduce.launch(x, p.peers, p.counters, p.rank, p.world, PUSH_MAX_ROWS, PUSH_ROW_BYTES,
                                  residual=residual, weight=weight, eps=eps,
                                  add_unit_offset=add_unit_offset)


def try_all_reduce_add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                               add_unit_offset: bool) -> Optional[tuple[Tensor, Tensor]]:
    """(rmsnorm(sum over ranks of x + residual), sum + residual) from one push kernel, or None."""
    return _push(x, residual, weight, eps, add_unit_offset)


def try_linear_all_reduce_add_rmsnorm(x: Tensor, weight: Tensor, residual: Tensor, norm_weight: Tensor, eps: float,
                                      add_unit_offset: bool) -> Optional[tuple[Tensor, Tensor]]:
    """(normed, new_residual) of linear(x, weight) all-reduced, added to residual and normalized: the Triton
    GEMV pushes each output tile to the peers as it finishes, then the push kernel waits for the peers'
    tiles, sums and normalizes (no load-and-push of its own). None when either kernel cannot take the
    operands (decided from shapes and dtypes: the same on every rank)."""
    if _PUSH is None:
        return None
    from autodeploy.backends.triton import linear, push_all_reduce

    # the GEMV's output has the residual's shape and dtype
    if (linear.unsupported_reason(x, weight) or residual.shape != (*x.shape[:-1], weight.shape[0])
            or residual.dtype != x.dtype
            or push_all_reduce.unsupported_reason(residual, PUSH_MAX_ROWS, PUSH_ROW_BYTES, residual, norm_weight)):
        return None
    p = _PUSH
    partial = linear.launch(x, weight, push=(p.peers, p.counters, p.rank, p.world, PUSH_MAX_ROWS, PUSH_ROW_BYTES))
    return push_all_reduce.launch(partial, p.peers, p.counters, p.rank, p.world, PUSH_MAX_ROWS, PUSH_ROW_BYTES,
                                  residual=residual, weight=norm_weight, eps=eps, add_unit_offset=add_unit_offset,
                                  pushed=True)


def try_all_gather_last(x: Tensor) -> Optional[Tensor]:
    """x [..., n] -> [..., W * n] (every rank's x side by side, rank order) through the push kernel's
    slots, or None (the caller then uses NCCL): a decode step's vocab-parallel logits, [b, V / W]."""
    if _PUSH is None:
        return None
    from autodeploy.backends.triton import push_all_reduce

    if push_all_reduce.gather_unsupported_reason(x, PUSH_MAX_ROWS, PUSH_ROW_BYTES):
        return None
    p = _PUSH
    return push_all_reduce.launch_gather(x, p.peers, p.counters, p.rank, p.world, PUSH_MAX_ROWS, PUSH_ROW_BYTES)


def try_all_reduce(x: Tensor) -> Optional[Tensor]:
    """x [...] -> sum over ranks [...] (a new tensor), or None when NCCL should take it."""
    pushed = _push(x)
    if pushed is not None:
        return pushed
    if not qualifies(x):
        return None
    x = x.contiguous()
    # the symmetric buffer, viewed as x: same storage (rendezvous finds it by its base pointer)
    slot = _BUFFER.flat[: x.numel() * x.element_size()].view(x.dtype).view(x.shape)
    return torch.ops.symm_mem.one_shot_all_reduce_copy(slot, x, "sum", _BUFFER.group_name)


def reset() -> None:
    global _BUFFER, _PUSH
    _BUFFER = _PUSH = None
