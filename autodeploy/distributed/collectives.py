"""The canonical collectives: `autodeploy::all_reduce`, `autodeploy::all_gather`, and the all-reduce
fused with the residual add + RMSNorm after it, `autodeploy::all_reduce_add_rmsnorm`.

    all_reduce(x)                   -> sum of x over the ranks            [same shape]
    all_gather(x, dim, world_size)  -> the ranks' x concatenated on dim   [.., world_size * x.shape[dim], ..]
    all_reduce_add_rmsnorm(x, residual, weight, eps, add_unit_offset)
                                    -> fused_add_rmsnorm(all_reduce(x), residual, ...): (normed, new_residual)
    linear_all_reduce_add_rmsnorm(x, weight, residual, norm_weight, eps, add_unit_offset)
                                    -> all_reduce_add_rmsnorm(linear(x, weight), residual, ...)

Backed by torch.distributed on the default group (NCCL on GPUs, gloo on the CPU); at world size 1
(no process group) each is the identity, so a sharded graph also runs in one process. Ops return
new tensors (custom ops may not alias their inputs). `world_size` is an argument of all_gather so
the graph states its output shape without a process group (shape propagation, plan printing).

They are opaque to torch.compile (their fake impls give shapes) and capturable in CUDA graphs on
NCCL once the communicator exists (the first eager call creates it). Small CUDA all-reduces go
through symm_all_reduce.py's one-shot kernel when runtime.all_reduce is "auto" (the default) and
every rank could set it up; decode-sized ones (and all_reduce_add_rmsnorm whole, and all_gathers on
the last dim of up to 1 MB a rank: the vocab-parallel logits) through its push kernel.
all_reduce_add_rmsnorm's reference is the two ops it replaces, so it changes no result on the CPU;
transforms/fuse_all_reduce_rmsnorm.py puts it in the graph. linear_all_reduce_add_rmsnorm (put there by
transforms/fuse_linear_all_reduce.py) is, at decode rows on CUDA, the Triton GEMV pushing its output
tiles to the peers as they finish and the push kernel's reducing half; elsewhere linear, then
all_reduce_add_rmsnorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from autodeploy.backends.torch.fused_add_rmsnorm import fused_add_rmsnorm as _fused_add_rmsnorm_op
from autodeploy.distributed import symm_all_reduce

_fused_add_rmsnorm = _fused_add_rmsnorm_op._init_fn  # the reference as plain Python


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


@torch.library.custom_op("autodeploy::all_reduce_add_rmsnorm", mutates_args=())
def all_reduce_add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                           add_unit_offset: bool = False) -> tuple[Tensor, Tensor]:
    """x, residual [..., h], weight [h] -> (rmsnorm(s + residual), s + residual), s = the sum of every rank's x."""
    if _world() > 1:
        fused = symm_all_reduce.try_all_reduce_add_rmsnorm(x, residual, weight, eps, add_unit_offset)
        if fused is not None:
            return fused
    summed = all_reduce(x)
    if summed.is_cuda:  # prefill rows (NCCL): the add + norm in the one kernel the unfused graph would have used
        from autodeploy.backends.triton import rmsnorm as triton_rmsnorm

        if triton_rmsnorm.supports(summed, weight, residual):
            return triton_rmsnorm.launch(summed, weight, eps, add_unit_offset, residual=residual)
    return _fused_add_rmsnorm(summed, residual, weight, eps, add_unit_offset)


@all_reduce_add_rmsnorm.register_fake
def _(x, residual, weight, eps, add_unit_offset=False):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@torch.library.custom_op("autodeploy::linear_all_reduce_add_rmsnorm", mutates_args=())
def linear_all_reduce_add_rmsnorm(x: Tensor, weight: Tensor, residual: Tensor, norm_weight: Tensor, eps: float,
                                  add_unit_offset: bool = False) -> tuple[Tensor, Tensor]:
    """x [..., k], weight [h, k] (a row-parallel shard), residual [..., h], norm_weight [h] ->
    all_reduce_add_rmsnorm(linear(x, weight), residual, norm_weight, eps, add_unit_offset)."""
    if _world() > 1:
        fused = symm_all_reduce.try_linear_all_reduce_add_rmsnorm(x, weight, residual, norm_weight, eps,
                                                                  add_unit_offset)
        if fused is not None:
            return fused
    return all_reduce_add_rmsnorm(torch.nn.functional.linear(x, weight), residual, norm_weight, eps, add_unit_offset)


@linear_all_reduce_add_rmsnorm.register_fake
def _(x, weight, residual, norm_weight, eps, add_unit_offset=False):
    return (torch.empty_like(residual, memory_format=torch.contiguous_format),
            torch.empty_like(residual, memory_format=torch.contiguous_format))


@torch.library.custom_op("autodeploy::all_gather", mutates_args=())
def all_gather(x: Tensor, dim: int, world_size: int) -> Tensor:
    """x [.., n, ..] -> [.., world_size * n, ..]: rank r's x at positions r*n .. (r+1)*n on `dim`."""
    if _world() == 1:
        if world_size != 1:
            raise RuntimeError(f"all_gather over {world_size} ranks called without a process group")
        return x.contiguous().clone()
    dim = dim % x.dim()
    x = x.contiguous()
    if dim == x.dim() - 1:
        gathered = symm_all_reduce.try_all_gather_last(x)  # decode logits: one push kernel over NVLink
        if gathered is not None:
            return gathered
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
