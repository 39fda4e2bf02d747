"""Autotuner: per op and shape bucket, time the candidates once and keep the fastest.

Choices persist in `<cache dir>/autotune.json`, keyed by the machine (GPU name, torch and triton
versions, PDL, how inputs were timed), then the op, then the shape bucket; the next run with the
same key reuses them without timing anything:

    {"NVIDIA H100 80GB HBM3 | torch 2.11.0 | triton 3.6.0 | pdl prefetch | from HBM": {
        "rmsnorm": {"x=[16,2048]:bfloat16 weight=[2048]:bfloat16": {
            "choice": "triton", "times_ms": {"torch": 0.031, "triton": 0.012}}}}}

With `enabled=False` (`--no-autotune`) the first candidate wins (callers list them in order of
preference) and nothing is timed or written. Timing is pluggable (`measure=`) so the selection and
persistence logic can be tested with a fake clock.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from autodeploy.graph_capture import capture

log = logging.getLogger(__name__)

Inputs = tuple[Any, ...]


@dataclass
class Candidate:
    name: str  # "torch", "triton", "torch-compile", "triton:BLOCK=128" …
    fn: Callable[..., Any]  # called as fn(*inputs)
    pdl: bool = False  # all its kernels overlap the kernel before them under PDL (candidates.BackendOp.pdl)


# With programmatic dependent launch on, a candidate whose kernels take part in it keeps its place unless
# one that does not (cuBLAS, aten) is faster by more than this: timed alone, back to back with itself, a
# candidate cannot show what PDL saves between different kernels of a decode step. Measured on two H200
# (8B, TP=2, BENCHMARKS.md sixth session): the tuner took cuBLAS + act for gate_up on a 0.4% lead
# (32.45 vs 32.58 us) and the step ran 3.209 ms, against 2.985 ms with the Triton gated GEMV.
PDL_MARGIN_REL = 0.10
PDL_MARGIN_S = 2e-6


def pick(names: Sequence[str], times: dict[str, float], pdl_names: set[str], pdl_on: bool) -> str:
    """The fastest of `names` by `times` (seconds; ties: the earlier name); with PDL on, a PDL candidate
    within the margin of a faster non-PDL one is taken instead."""
    best = min(names, key=lambda n: (times.get(n, math.inf), names.index(n)))
    if math.isinf(times.get(best, math.inf)):
        return names[0]
    if pdl_on and best not in pdl_names:
        overlapping = [n for n in names if n in pdl_names and math.isfinite(times.get(n, math.inf))]
        if overlapping:
            alt = min(overlapping, key=lambda n: (times[n], names.index(n)))
            if times[alt] - times[best] <= max(PDL_MARGIN_REL * times[alt], PDL_MARGIN_S):
                return alt
    return best


Measure = Callable[[Candidate, Inputs], float]  # seconds per call


def device_key(device: torch.device | str = "cpu") -> str:
    """What makes timings comparable: the card, torch and triton versions, whether the Triton kernels
    launch with programmatic dependent launch (choices made without it are not reused with it), and on
    CUDA that inputs came from HBM (measure_candidate; files timed from L2 before that are not reused)."""
    device = torch.device(device)
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = device.type
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "none"
    key = f"{gpu} | torch {torch.__version__} | triton {triton_v}"
    if triton_v != "none" and device.type == "cuda":
        from autodeploy.backends.triton._common import pdl_enabled, pdl_prefetch_enabled

        key += " | pdl" if pdl_enabled(device) else ""
        key += " prefetch" if pdl_prefetch_enabled(device) else ""
    return key + (" | from HBM" if device.type == "cuda" else "")


def _graphed(fn: Callable[[], Any], device: torch.device, inner: int) -> Callable[[], Any] | None:
    """`inner` calls of fn captured in one CUDA graph (None when fn cannot be captured, e.g. it syncs)."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph, _ = capture(lambda: [fn() for _ in range(inner)], device)
        return graph.replay
    except Exception:  # noqa: BLE001  (capture() has released the random generator)
        torch.cuda.synchronize(device)
        return None


def time_callable(fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 3, reps: int = 10,
                  inner: int = 20) -> float:
    """Median seconds per call.

    On CUDA, `inner` calls are replayed from one CUDA graph between two events: a decode-sized
    kernel runs for a few microseconds, about a launch's cost, so timing launches would rank
    candidates by Python overhead rather than by what a captured decode step pays. Calls that
    cannot be captured are timed with events around plain launches. On the CPU: the host clock.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        replay = _graphed(fn, device, inner)
        run, per = (replay, inner) if replay is not None else (fn, 1)
        run()
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / per)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


COLD_MAX_COPIES = 8


def cold_copies(nbytes: int, l2_bytes: int) -> int:
    """Input sets to cycle through so >= 2x L2 is read between two uses of one (1: inputs that large already)."""
    return min(COLD_MAX_COPIES, math.ceil(2 * l2_bytes / nbytes) + 1) if 0 < nbytes < 2 * l2_bytes else 1


def cold_input_sets(inputs: Inputs, device: torch.device) -> list[Inputs]:
    """`inputs` and enough clones of its tensors that cycling through them reads >= 2x the L2 cache
    between two uses of one set (at most COLD_MAX_COPIES sets).

    A decode step reads each weight once, from HBM: ~7 GB pass between two reads of one layer's
    weight. Twenty calls on one weight would time it from L2 wherever it fits there (an 8B's qkv and
    o shards at TP=2: 25 and 17 MB against the H200's 60 MB), where cuBLAS's short kernels win, and
    the tuner picked them over GEMVs that are faster from HBM (the sweep's o shard: 6.5 us against
    cuBLAS's 7.6). Inputs of 2x L2 or more (lm_head) and CPU inputs are used as they are."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    if device.type != "cuda" or nbytes == 0:
        return [inputs]
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20) or (50 << 20)
    sets = [inputs]
    for _ in range(cold_copies(nbytes, l2) - 1):
        sets.append(tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in inputs))
    return sets


def measure_candidate(cand: Candidate, inputs: Inputs, device: torch.device, warmup: int = 3, reps: int = 10) -> float:
    """The default measure: median seconds of `cand.fn(*inputs)` (looked up at call time, so tests can swap it),
    cycling through cold_input_sets so weights come from HBM as in a decode step."""
    sets = itertools.cycle(cold_input_sets(inputs, device))
    return time_callable(lambda: cand.fn(*next(sets)), device, warmup, reps)


def default_cache_path() -> Path:
    from autodeploy.models.example import cache_dir

    return cache_dir() / "autotune.json"


class Autotuner:
    def __init__(
        self,
        path: str | Path | None = None,
        *,
        enabled: bool = True,
        device: torch.device | str = "cpu",
        measure: Measure | None = None,
        key: str | None = None,
        warmup: int = 3,
        reps: int = 10,
    ) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.enabled = enabled
        self.device = torch.device(device)
        self.key = key or device_key(self.device)
        self.measure = measure or (lambda c, inputs: measure_candidate(c, inputs, self.device, warmup, reps))
        self.hits = 0  # choices reused from the file
        self.tuned = 0  # (op, bucket) pairs timed this run
        self._data: dict[str, Any] = self._load()

    # ---- persistence ---------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        if not self.enabled or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError) as e:  # a corrupt cache is rebuilt, never fatal
            log.warning("ignoring unreadable autotune cache %s: %s", self.path, e)
            return {}

    def save(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
        tmp.replace(self.path)  # atomic: a concurrent reader sees the old or the new file

    def entry(self, op: str, bucket: str) -> dict[str, Any] | None:
        return self._data.get(self.key, {}).get(op, {}).get(bucket)

    def _pdl_on(self) -> bool:
        if self.device.type != "cuda":
            return False
        from autodeploy.backends.triton._common import pdl_enabled

        return pdl_enabled(self.device)

    # ---- selection -----------------------------------------------------------------------------
    def choose(
        self,
        op: str,
        bucket: str,
        candidates: Sequence[Candidate],
        make_inputs: Callable[[], Inputs],
        *,
        save: bool = True,
    ) -> str:
        """The name of the fastest candidate for (op, bucket): from the file when known, else timed."""
        if not candidates:
            raise ValueError(f"autotune {op}: no candidates")
        names = [c.name for c in candidates]
        if not self.enabled or len(candidates) == 1:
            return names[0]
        pdl_names = {c.name for c in candidates if c.pdl}
        known = self.entry(op, bucket)
        if known and known.get("choice") in names and set(names) <= set(known.get("times_ms", {})):
            self.hits += 1  # the stored times, picked again (the rule may be newer than the file)
            stored = {n: (t / 1e3 if t is not None else math.inf) for n, t in known["times_ms"].items()}
            return pick(names, stored, pdl_names, self._pdl_on())
        inputs = make_inputs()
        times: dict[str, float] = {}
        errors: dict[str, str] = {}
        for cand in candidates:
            try:
                times[cand.name] = float(self.measure(cand, inputs))
            except Exception as e:  # a candidate that fails on this shape loses, loudly: usually a kernel bug
                errors[cand.name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                log.warning("autotune %s [%s]: %s failed (%s)", op, bucket, cand.name, errors[cand.name])
                times[cand.name] = math.inf
        best = pick(names, times, pdl_names, self._pdl_on())
        self.tuned += 1
        self._data.setdefault(self.key, {}).setdefault(op, {})[bucket] = {
            "choice": best,
            "times_ms": {n: (t * 1e3 if math.isfinite(t) else None) for n, t in times.items()},
            **({"errors": errors} if errors else {}),
        }
        log.info("autotune %s [%s]: %s (%s)", op, bucket, best,
                 ", ".join(f"{n} {t * 1e3:.4f} ms" for n, t in times.items() if math.isfinite(t)))
        if save:
            self.save()
        return best
