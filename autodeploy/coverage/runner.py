"""Run many architectures, each in its own child process with a timeout: one crash or hang never ends the run.

    results = run_archs(causal_lm_archs(), jobs=2, timeout=180)     # list[ArchResult], in arch order

The parent imports torch, transformers and autodeploy once, then forks one child per architecture
(so each child starts in milliseconds, not the ~5 s of a fresh interpreter). A child reports every
stage it enters over a pipe and ends with its result; a child that times out is killed, and one
that dies (segfault, OOM kill) is reported at the stage it had reached, with the exit signal.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable

from autodeploy.coverage.archs import Arch

STAGES = ("config", "build", "export", "transform", "load", "run", "mismatch")


@dataclass
class ArchResult:
    arch: str  # model_type
    class_name: str
    status: str  # "pass", "skipped", or the stage it fails at (STAGES)
    path: str | None = None  # "kv-cache" or "no-cache" (the uncached graph recomputed each step)
    matches: dict[str, int | None] = field(default_factory=dict)  # canonical op -> rewrites (None: skipped)
    reason: str = ""  # failure or skip reason: the first unsupported op / pattern, or the exception line
    notes: list[str] = field(default_factory=list)  # transform warnings (why a path stayed uncached, ...)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _child(model_type: str, conn) -> None:
    import faulthandler

    import torch

    faulthandler.disable()  # a crash is reported by its signal in the table, not as a stack dump on stderr
    from autodeploy.coverage.worker import describe, run_arch

    torch.set_num_threads(1)  # the parent runs `jobs` children on as many cores
    stage = "config"

    def on_stage(s: str) -> None:
        nonlocal stage
        stage = s
        conn.send(("stage", s))

    try:
        result = run_arch(model_type, on_stage)
    except BaseException as e:  # anything the worker did not attribute: the stage it was in
        result = {"status": stage, "reason": f"uncaught {describe(e)}"}
    conn.send(("result", result))
    conn.close()


def _context():
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


WARMUP_ARCH = "llama"


def preload(warm: bool = False) -> None:
    """Import what every child needs once, in the parent, before forking.

    With `warm`, the parent also runs WARMUP_ARCH through the pipeline once: torch.export's and the
    pattern matchers' first-use setup (~3 s on a busy core) is then inherited by every child
    instead of repeated in each. One intra-op thread keeps the fork safe (no OpenMP pool to lose).
    """
    import torch
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: F401

    import autodeploy.api  # noqa: F401
    from autodeploy.coverage import worker
    from autodeploy.transforms.pipeline import registry

    registry()
    if warm:
        torch.set_num_threads(1)
        try:
            worker.run_arch(WARMUP_ARCH)
        except Exception:  # a broken warm-up only costs time; the children report the real failure
            pass


@dataclass
class _Running:
    arch: Arch
    proc: Any
    conn: Any
    start: float
    stage: str = "config"
    result: dict[str, Any] | None = None


def _drain(r: _Running) -> None:
    try:
        while r.conn.poll():
            kind, payload = r.conn.recv()
            if kind == "stage":
                r.stage = payload
            else:
                r.result = payload
    except (EOFError, OSError):
        pass


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"process killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"process killed by signal {-code}"
    return f"process exited with code {code} before reporting"


def _finish(r: _Running, timed_out: float | None) -> ArchResult:
    seconds = time.perf_counter() - r.start
    res = ArchResult(r.arch.model_type, r.arch.class_name, r.stage, seconds=round(seconds, 1))
    if timed_out is not None:
        res.reason = f"timed out after {timed_out:.0f} s"
    elif r.result is None:
        res.reason = _died(r.proc.exitcode)
    else:
        for key in ("status", "path", "matches", "reason", "notes"):
            if r.result.get(key) is not None:
                setattr(res, key, r.result[key])
    return res


def run_archs(archs: list[Arch], jobs: int = 1, timeout: float = 180.0,
              on_result: Callable[[ArchResult], None] | None = None) -> list[ArchResult]:
    """Results in `archs` order; skipped architectures are reported without running."""
    ctx = _context()
    if ctx.get_start_method() == "fork":
        preload(warm=sum(not a.skip for a in archs) > max(1, jobs))
    results: dict[str, ArchResult] = {}
    pending = deque()
    for arch in archs:
        if arch.skip:
            results[arch.model_type] = ArchResult(arch.model_type, arch.class_name, "skipped", reason=arch.skip)
            if on_result:
                on_result(results[arch.model_type])
        else:
            pending.append(arch)
    running: list[_Running] = []
    while pending or running:
        while pending and len(running) < max(1, jobs):
            arch = pending.popleft()
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(arch.model_type, send), daemon=True)
            proc.start()
            send.close()  # the child holds the only write end: EOF once it exits
            running.append(_Running(arch, proc, recv, time.perf_counter()))
        wait([r.conn for r in running] + [r.proc.sentinel for r in running], timeout=0.5)
        for r in list(running):
            _drain(r)
            over = time.perf_counter() - r.start > timeout
            if r.proc.is_alive() and not over:
                continue
            if r.proc.is_alive():
                r.proc.kill()
            r.proc.join()
            _drain(r)
            res = _finish(r, timeout if over and r.result is None else None)
            r.conn.close()
            running.remove(r)
            results[r.arch.model_type] = res
            if on_result:
                on_result(res)
    return [results[a.model_type] for a in archs]
