"""Launching N ranks, and the one-scheduler step loop across them.

    torchrun --nproc-per-node N -m autodeploy generate <model> …     every rank runs the command
    autodeploy generate <model> --world-size N …                     spawns the N ranks itself

Every rank exports, transforms (its own slice of the plan) and loads its weights. Rank 0 then
does the I/O and runs the scheduler: each engine step goes through `LeaderModel.forward`, which
broadcasts the step's SequenceInfo (one header and one int64 payload over a host-side gloo group)
before running its own forward. The other ranks sit in `follow()`, running the same forward on
each step they receive, so the collectives inside the graph meet. With overlap scheduling the
previous step's sampled tokens (still on rank 0's device) are broadcast on the main group.

    rank 0:  schedule ─ broadcast(step) ─ forward ─ all_reduce … ─ sample ─ …
    rank k:            receive(step)    ─ forward ─ all_reduce … ─ (logits dropped)

When the command ends (normally or not), rank 0 broadcasts STOP (atexit) and the followers return.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as tdist

from autodeploy.distributed import dist
from autodeploy.runtime.sequence_info import SequenceInfo

log = logging.getLogger(__name__)

STOP, STEP = 0, 1
_HEADER = 9  # cmd, T, b, P, num_prefill, num_decode, page_size, has_source, n_prev_tokens
# One fixed-size message per step; a payload that does not fit after the header (a big prefill)
# follows in a second broadcast. 4 KiB holds a decode step of ~40 sequences in one round trip.
_MESSAGE = 512
_FIELDS = ("input_ids", "position_ids", "seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table",
           "slot_mapping", "last_token_idx")
_pending_stop = False  # rank 0: a follower may be waiting for STOP (set by each optimize())
_atexit_registered = False


# ---- set-up --------------------------------------------------------------------------------------
def setup_ranks(recipe) -> int:
    """Join the process group the recipe (or the launcher) asks for; the rank's device goes into
    the recipe. Returns the world size (1: nothing to do)."""
    global _pending_stop, _atexit_registered
    rt = recipe.runtime
    world = dist.requested_world_size(rt)
    if world <= 1:
        return 1
    rt.device = dist.rank_device(rt.device, world)
    dist.init_distributed(world, rt.device, rt.all_reduce)
    rt.world_size = world  # the transforms read it
    _pending_stop = True
    if not _atexit_registered:
        atexit.register(stop_followers)
        _atexit_registered = True
    return world


def stop_followers() -> None:
    """Rank 0: release the followers (their `follow()` returns). Runs at exit too; sends once per
    optimize(), so each follow() session ends with exactly one STOP."""
    global _pending_stop
    if not (_pending_stop and dist.is_initialized() and dist.is_leader()):
        return
    _pending_stop = False
    try:
        _send_header([STOP] + [0] * (_HEADER - 1))
    except Exception:  # noqa: BLE001 (at exit the group may already be gone)
        log.debug("STOP not delivered", exc_info=True)


def exit_ranks(code: int) -> None:
    """End a sharded CLI process: release the followers, then leave without tearing NCCL down.

    Destroying a NCCL communicator that CUDA graphs captured collectives on can wait forever
    (the graphs hold references the teardown waits for; pytorch/pytorch#115388), so a sharded run
    exits at once once its output is flushed. A process that never joined a group returns."""
    if not (dist.is_initialized() and dist.world_size() > 1):
        return
    stop_followers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---- the step channel ----------------------------------------------------------------------------
def _send_header(values: list[int], payload: torch.Tensor | None = None) -> None:
    """Broadcast one message: the header, and the payload inline when it fits (else right after)."""
    msg = torch.zeros(_MESSAGE, dtype=torch.int64)
    msg[:_HEADER] = torch.tensor(values, dtype=torch.int64)
    inline = payload is not None and payload.numel() <= _MESSAGE - _HEADER
    if inline:
        msg[_HEADER : _HEADER + payload.numel()] = payload
    tdist.broadcast(msg, src=0, group=dist.control_group())
    if payload is not None and not inline:
        tdist.broadcast(payload, src=0, group=dist.control_group())


def payload_size(T: int, b: int, P: int, has_source: bool) -> int:
    """int64s of a step: input_ids, position_ids, slot_mapping [T]; seq_lens, input_pos, cache_lens,
    last_token_idx [b]; cu_seqlens [b+1]; page_table [b, P]; token source [T] with overlap."""
    return 3 * T + 5 * b + 1 + b * P + (T if has_source else 0)


def _pack(info: SequenceInfo, source: torch.Tensor | None) -> torch.Tensor:
    parts = [getattr(info, f).reshape(-1).to("cpu", torch.int64) for f in _FIELDS]
    if source is not None:
        parts.append(source.reshape(-1).to("cpu", torch.int64))
    return torch.cat(parts)


def _unpack(payload: torch.Tensor, T: int, b: int, P: int, header: list[int]) -> tuple[SequenceInfo, torch.Tensor | None]:
    sizes = {"input_ids": T, "position_ids": T, "seq_lens": b, "cu_seqlens": b + 1, "input_pos": b,
             "cache_lens": b, "page_table": b * P, "slot_mapping": T, "last_token_idx": b}
    i32 = ("seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table")
    kw: dict[str, Any] = {}
    off = 0
    for f in _FIELDS:
        t = payload[off : off + sizes[f]]
        off += sizes[f]
        t = t.to(torch.int32) if f in i32 else t.clone()
        kw[f] = t.reshape(b, P) if f == "page_table" else t
    source = payload[off : off + T].clone() if header[7] else None
    info = SequenceInfo(**kw, num_prefill=header[4], num_decode=header[5], page_size=header[6])
    return info, source


class LeaderModel:
    """Rank 0's view of the paged model: each forward is first broadcast to the followers."""

    def __init__(self, model: Any):
        self.model = model

    def __getattr__(self, name: str) -> Any:  # num_pages, page_size, accepts_token_source, caches …
        return getattr(self.model, name)

    @property
    def metadata_device(self) -> torch.device:
        return torch.device("cpu")  # built on the host: broadcast as is, one copy to the device after

    def forward(self, info: SequenceInfo, token_source: tuple[torch.Tensor, torch.Tensor] | None = None):
        prev, source = token_source if token_source is not None else (None, None)
        T, b = info.num_tokens, info.num_seqs
        P = int(info.page_table.shape[1])
        header = [STEP, T, b, P, info.num_prefill, info.num_decode, info.page_size, int(source is not None),
                  int(prev.numel()) if prev is not None else 0]
        _send_header(header, _pack(info, source))
        if prev is not None:  # sampled on this device: the followers get them device to device
            share_tokens(prev)
            return self.model.forward(info, token_source=token_source)
        return self.model.forward(info)

    __call__ = forward


def share_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Rank 0's sampled tokens [n] int64 on every rank (`tokens` on rank 0; any [n] int64 elsewhere, filled).

    On CUDA with the push all-reduce set up (distributed/symm_all_reduce.py) this is that kernel: rank 0
    contributes the ids as fp32 (exact below 2^24, any vocabulary), the others zeros, and the sum is the
    ids: ~3 small kernels instead of a NCCL broadcast (24 us a step on two H200s). Elsewhere, or where
    symm_all_reduce takes no such row (every rank decides alike), a broadcast on the main group."""
    from autodeploy.distributed import symm_all_reduce

    if tokens.is_cuda and symm_all_reduce.push_active():
        mine = tokens.to(torch.float32) if dist.is_leader() else torch.zeros(tokens.numel(), device=tokens.device)
        summed = symm_all_reduce.try_all_reduce(mine.view(1, -1))  # [1, n]
        if summed is not None:
            if not dist.is_leader():
                tokens.copy_(summed.view(-1))
            return tokens
    tdist.broadcast(tokens if tokens.is_contiguous() else tokens.contiguous(), src=0)
    return tokens


def leader_model(model: Any, runtime_config) -> Any:
    """The model the engine steps: wrapped on rank 0 of a sharded runtime, else as is."""
    if dist.sharded(runtime_config) and dist.is_leader() and model is not None and not isinstance(model, LeaderModel):
        return LeaderModel(model)
    return model


def follow(model: Any) -> int:
    """A follower's loop: run each step rank 0 broadcasts until STOP; returns the steps run."""
    steps = 0
    device = torch.device(getattr(model, "device", "cpu"))
    with torch.inference_mode():
        while True:
            msg = torch.empty(_MESSAGE, dtype=torch.int64)
            tdist.broadcast(msg, src=0, group=dist.control_group())
            h = msg[:_HEADER].tolist()
            if h[0] == STOP:
                return steps
            T, b, P = h[1], h[2], h[3]
            n = payload_size(T, b, P, bool(h[7]))
            if n <= _MESSAGE - _HEADER:
                payload = msg[_HEADER : _HEADER + n]
            else:
                payload = torch.empty(n, dtype=torch.int64)
                tdist.broadcast(payload, src=0, group=dist.control_group())
            info, source = _unpack(payload, T, b, P, h)
            if h[8]:
                prev = share_tokens(torch.empty(h[8], dtype=torch.int64, device=device))
                model.forward(info, token_source=(prev, source))
            else:
                model.forward(info)
            steps += 1


def follow_if_worker(rt) -> bool:
    """On a follower rank: run the step loop for `rt`'s model and return True (the caller is done)."""
    if not dist.sharded(rt.recipe.runtime) or dist.is_leader():
        return False
    if rt.model is None:
        from autodeploy.runtime.runtime import build_paged_model

        rt.model = build_paged_model(rt.graph_module, rt.recipe.runtime)
    steps = follow(rt.model)
    log.info("rank %d: %d steps followed", dist.rank(), steps)
    return True


# ---- spawning ------------------------------------------------------------------------------------
def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], world: int) -> int:
    """Run `python -m autodeploy <argv>` as `world` ranks on this host; rank 0 keeps the terminal.

    The other ranks' output goes to a temporary log, printed if one fails. Returns the first
    non-zero exit code (every rank is stopped once one fails)."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world))
    procs, logs = [], []
    for r in range(world):
        renv = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        if r == 0:
            procs.append(subprocess.Popen([sys.executable, "-m", "autodeploy", *argv], env=renv))
            logs.append(None)
        else:
            f = tempfile.TemporaryFile()
            procs.append(subprocess.Popen([sys.executable, "-m", "autodeploy", *argv], env=renv,
                                          stdout=subprocess.DEVNULL, stderr=f))
            logs.append(f)
    code = 0
    try:
        pending = set(range(world))
        while pending:
            for r in sorted(pending):
                rc = procs[r].poll()
                if rc is None:
                    continue
                pending.discard(r)
                if rc != 0 and code == 0:
                    code = rc
                    if logs[r] is not None:
                        logs[r].seek(0)
                        sys.stderr.write(f"rank {r} failed:\n{logs[r].read().decode(errors='replace')[-4000:]}\n")
                    for other in procs:
                        if other.poll() is None:
                            other.terminate()
            time.sleep(0.05)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        raise
    return code
