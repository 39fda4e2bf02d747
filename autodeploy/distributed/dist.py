"""Process-group helpers: who am I, how many are we, and the set-up `optimize()` runs.

torchrun (or `autodeploy … --world-size N`, which spawns the same way) sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them. The main group uses NCCL
when the runtime device is CUDA, gloo on the CPU. A second gloo group carries the per-step control
messages (SequenceInfo broadcasts) on the host, so a follower waiting for the next step never
holds a GPU stream.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from autodeploy.distributed import symm_all_reduce
from autodeploy.errors import RecipeError

log = logging.getLogger(__name__)

_CONTROL: dist.ProcessGroup | None = None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_leader() -> bool:
    """Rank 0 does the I/O and runs the scheduler."""
    return rank() == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def requested_world_size(runtime_config) -> int:
    """runtime.world_size, or (null) the launcher's WORLD_SIZE."""
    n = getattr(runtime_config, "world_size", None)
    return env_world_size() if n is None else int(n)


def transform_world(ctx) -> tuple[int, int]:
    """(world size, this rank) for the SHARD transforms: the recipe's runtime.world_size (or the
    launcher's) and the process group must agree; without a group a plan is detected as rank 0
    (or ctx.extra["rank"])."""
    from autodeploy.distributed.plan import ShardingError

    rt = getattr(ctx.recipe, "runtime", None)
    world = requested_world_size(rt) if rt is not None else 1
    if is_initialized() and world > 1 and world_size() != world:
        raise ShardingError(f"runtime.world_size={world} but the process group has {world_size()} ranks")
    return world, int(ctx.extra.get("rank", rank()))


def rank_device(device: str, world: int) -> str:
    """`cuda` becomes `cuda:<local rank>` when sharded; an explicit index or the CPU stays."""
    d = torch.device(device)
    if world > 1 and d.type == "cuda" and d.index is None:
        return f"cuda:{local_rank()}"
    return device


def init_distributed(world: int, device: str, all_reduce: str = "auto") -> None:
    """Join (or check) the process group of `world` ranks; a no-op at world size 1. `all_reduce`:
    "auto" sets up the symmetric-memory paths for small all-reduces on CUDA (symm_all_reduce.py: the
    push kernel, torch's one-shot kernel), "oneshot" only torch's, "nccl" leaves every all-reduce to NCCL."""
    global _CONTROL
    if world <= 1:
        return
    if is_initialized():
        if dist.get_world_size() != world:
            raise RecipeError(f"runtime.world_size={world} but the process group has {dist.get_world_size()} ranks")
    else:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
        if missing:
            raise RecipeError(
                f"runtime.world_size={world} needs a launcher ({', '.join(missing)} unset): run under "
                f"`torchrun --nproc-per-node {world} -m autodeploy …` or pass `--world-size {world}` to the CLI"
            )
        if env_world_size() != world:
            raise RecipeError(f"runtime.world_size={world} but the launcher started WORLD_SIZE={env_world_size()}")
        d = torch.device(device)
        backend = "nccl" if d.type == "cuda" else "gloo"
        if d.type == "cuda":
            torch.cuda.set_device(d.index if d.index is not None else local_rank())
        # a rank that died leaves the others waiting in a collective this long (tests shorten it)
        timeout = float(os.environ.get("AUTODEPLOY_DIST_TIMEOUT_S", 1800))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        log.info("rank %d of %d joined (%s)", dist.get_rank(), world, backend)
    if _CONTROL is None:
        # every rank creates it at the same point: group creation is itself collective
        _CONTROL = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        symm_all_reduce.setup(all_reduce, symm_all_reduce.DEFAULT_MAX_BYTES, torch.device(device), _CONTROL)


def control_group():
    """The host-side (gloo) group for control messages."""
    if _CONTROL is None and is_initialized():
        raise RuntimeError("init_distributed() has not run in this process")
    return _CONTROL


def destroy() -> None:
    global _CONTROL
    symm_all_reduce.reset()
    if is_initialized():
        dist.destroy_process_group()
    _CONTROL = None


def sharded(runtime_config) -> bool:
    """Whether this runtime is one rank of several (the process group is then set up)."""
    return requested_world_size(runtime_config) > 1 and is_initialized()


def agree_min(value: int, runtime_config) -> int:
    """The smallest `value` over the ranks of a sharded runtime (KV pool pages: every rank must hold
    the pages rank 0 hands out); `value` itself otherwise."""
    if not sharded(runtime_config):
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control_group())
    return int(t.item())
