"""Capture a CUDA graph that may fail (an op that syncs with the host) and leave the device usable.

torch's CUDAGraph.capture_end runs the random generators' capture epilogue only after
cudaStreamEndCapture succeeds. When a capture is invalidated (a `.item()` or another host sync inside
it), the device's default CUDA generator stays in capture mode, and every later random op on that
device (torch.randn, sampling at temperature > 0) fails with "Offset increment outside graph capture
encountered unexpectedly". One small capture that succeeds runs the generator's prologue and epilogue
again and leaves it as it was: `release_rng_capture` does that after any failed capture.

Both places that try a capture and fall back when it fails use `capture`: the decode buckets
(runtime/compile/model.py: a bucket that cannot be captured runs eagerly) and the autotuner's timing
(profiler/autotuner.py: a candidate that syncs is timed uncaptured).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)


def capture(fn: Callable[[], Any], device: torch.device, *, pool=None,
            stream: Optional[torch.cuda.Stream] = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, fn's outputs) of fn captured on `device`; on failure the generator is released and the error raised."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.device(device), torch.cuda.graph(graph, pool=pool, stream=stream):
            out = fn()
    except Exception:
        torch.cuda.synchronize(device)
        release_rng_capture(device)
        raise
    return graph, out


def release_rng_capture(device: torch.device) -> None:
    """Take `device`'s default CUDA generator out of a capture that ended in an error (module docstring)."""
    try:
        with torch.cuda.device(device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                torch.zeros(1, device=device)  # a node, so the capture is not empty
    except Exception as e:  # noqa: BLE001  (the caller's own error is the one to report)
        log.warning("could not release the CUDA generator after a failed graph capture (%s): random ops "
                    "on %s may fail", str(e).splitlines()[0] if str(e) else type(e).__name__, device)
