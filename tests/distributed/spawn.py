"""Run a function on N gloo ranks (torch.multiprocessing spawn), the way torchrun would set them up.

    results, mine = run_ranks(worker, 2, tmp_path, *args, meanwhile=f)   # worker(rank, out_dir, *args)
    results[r]                                   # what rank r returned; mine: f() run in the parent

Each rank gets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in its environment (what
autodeploy's own set-up reads) and one intra-op thread. A rank that raises fails the whole call
with its traceback.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out: str, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), AUTODEPLOY_DIST_TIMEOUT_S="300")  # a hung peer fails the test
    torch.set_num_threads(1)
    result = fn(rank, Path(out), *args)
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    import torch.distributed as tdist

    if tdist.is_initialized():
        # leave without tearing the group down, as launch.exit_ranks does: NCCL's teardown after captured CUDA
        # graphs can hang, and gloo's, when the peer has already gone, aborted a rank now and then
        # ("terminate called without an active exception", SIGABRT after its result was written)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def run_ranks(fn, world: int, out_dir: Path, *args, meanwhile=None) -> tuple[list, object]:
    """fn(rank, out_dir, *args) on `world` ranks; returns (each rank's return value, what
    `meanwhile()` returned: the parent's own work, run while the ranks do theirs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_entry, args=(world, free_port(), str(out_dir), fn, args), nprocs=world,
                             start_method="spawn", join=False)
    try:
        extra = meanwhile() if meanwhile is not None else None
    except BaseException:
        for p in ctx.processes:
            p.terminate()
        raise
    while not ctx.join():
        pass
    return [pickle.loads((out_dir / f"rank{r}.pkl").read_bytes()) for r in range(world)], extra
