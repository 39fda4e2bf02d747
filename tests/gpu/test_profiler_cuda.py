"""Profiler pieces on a GPU: graph-replayed kernel timing, the autotuner over real Triton / torch
candidates, and the copy bandwidth the roofline divides by."""

from __future__ import annotations

import json

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.profiler.autotuner import Autotuner, Candidate, device_key, time_callable
from autodeploy.profiler.roofline import copy_bandwidth

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_time_callable_replays_graphs_and_falls_back_for_host_syncs():
    a = torch.randn(512, 512, device="cuda")
    graphed = time_callable(lambda: a @ a, "cuda", warmup=2, reps=5)
    syncing = time_callable(lambda: (a @ a).sum().item(), "cuda", warmup=2, reps=5)  # not capturable
    assert 0 < graphed < 1e-2 and 0 < syncing < 1e-1
    # the failed capture must not leave the CUDA generator in capture mode (autodeploy/graph_capture.py)
    assert torch.randn(4, device="cuda").isfinite().all()
    assert torch.multinomial(torch.ones(8, device="cuda"), 1).item() < 8


def test_autotuner_times_triton_and_torch_rmsnorm(tmp_path):
    import autodeploy.backends.triton  # noqa: F401  (registers triton_rmsnorm)

    x = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(2048, device="cuda", dtype=torch.bfloat16)
    cands = [Candidate("triton", torch.ops.autodeploy.triton_rmsnorm.default),
             Candidate("torch", torch.ops.autodeploy.rmsnorm.default)]
    tuner = Autotuner(tmp_path / "a.json", device="cuda")
    pick = tuner.choose("rmsnorm", "x=[16,2048]:bfloat16", cands, lambda: (x, w, 1e-5))
    assert pick in ("triton", "torch")
    data = json.loads((tmp_path / "a.json").read_text())
    key = device_key("cuda")
    assert torch.cuda.get_device_name() in key
    times = data[key]["rmsnorm"]["x=[16,2048]:bfloat16"]["times_ms"]
    assert all(t is not None and t > 0 for t in times.values())
    again = Autotuner(tmp_path / "a.json", device="cuda")
    assert again.choose("rmsnorm", "x=[16,2048]:bfloat16", cands, lambda: (x, w, 1e-5)) == pick and again.hits == 1


def test_copy_bandwidth_is_a_device_figure():
    bw = copy_bandwidth("cuda", nbytes=1 << 28, reps=5)
    assert 1e11 < bw < 2e13  # 100 GB/s .. 20 TB/s: a real device-to-device copy, read + write
