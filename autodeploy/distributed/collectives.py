"""The canonical collectives: `autodeploy::all_reduce` and `autodeploy::all_gather`.

    all_reduce(x)                   -> sum of x over the ranks            [same shape]
    all_gather(x, dim, world_size)  -> the ranks' x concatenated on dim   [.., world_size * x.shape[dim], ..]

Backed by torch.distributed on the default group (NCCL on GPUs, gloo on the CPU); at world size 1
(no process group) each is the identity, so a sharded graph also runs in one process. Ops return
new tensors (custom ops may not alias their inputs). `world_size` is an argument of all_gather so
the graph states its output shape without a process group (shape propagation, plan printing).

They are opaque to torch.compile (their fake impls give shapes) and capturable in CUDA graphs on
NCCL once the communicator exists (the first eager call creates it). Small CUDA all-reduces go
through symm_all_reduce.py's one-shot kernel when runtime.all_reduce is "auto" (the default) and
every rank could set it up.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from autodeploy.distributed import symm_all_reduce


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.library.custom_op("autodeploy::all_reduce", mutates_args=())
def all_reduce(x: Tensor) -> Tensor:
    """x [...] -> the sum of every rank's x [...]."""
    if _world() == 1:
        return x.contiguous().clone()
    summed = symm_all_reduce.try_all_reduce(x)  # small CUDA messages: one kernel over NVLink
    if summed is not None:
        return summed
    out = x.contiguous().clone()
    dist.all_reduce(out)
    return out


@all_reduce.register_fake
def _(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("autodeploy::all_gather", mutates_args=())
def all_gather(x: Tensor, dim: int, world_size: int) -> Tensor:
    """x [.., n, ..] -> [.., world_size * n, ..]: rank r's x at positions r*n .. (r+1)*n on `dim`."""
    if _world() == 1:
        if world_size != 1:
            raise RuntimeError(f"all_gather over {world_size} ranks called without a process group")
        return x.contiguous().clone()
    dim = dim % x.dim()
    x = x.contiguous()
    if dist.get_backend() == "nccl":
        stacked = x.new_empty((world_size,) + tuple(x.shape))  # [W, ...x]: one collective, no list
        dist.all_gather_into_tensor(stacked, x)
        parts = stacked.unbind(0)
    else:
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x)
    return torch.cat(parts, dim=dim)


@all_gather.register_fake
def _(x, dim, world_size):
    shape = list(x.shape)
    shape[dim % x.dim()] = shape[dim % x.dim()] * world_size
    return x.new_empty(shape)
