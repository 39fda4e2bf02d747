"""symm_all_reduce on the CPU: the one-shot path stays off and every all-reduce takes the NCCL/gloo
route (the GPU side is tests/gpu/test_tp_nccl.py::test_one_shot_all_reduce_matches_nccl)."""

from __future__ import annotations

import pytest
import torch

from autodeploy.distributed import symm_all_reduce
from autodeploy.recipe import RuntimeConfig


def test_cpu_and_nccl_mode_never_set_up():
    # no collective runs on these paths: setup returns before touching the process group
    assert not symm_all_reduce.setup("auto", 1 << 20, torch.device("cpu"), control_group=None)
    assert not symm_all_reduce.setup("nccl", 1 << 20, torch.device("cuda"), control_group=None)
    assert not symm_all_reduce.active()
    assert symm_all_reduce.try_all_reduce(torch.ones(4)) is None


def test_recipe_knob_is_validated():
    assert RuntimeConfig().all_reduce == "auto"
    assert RuntimeConfig(all_reduce="nccl").all_reduce == "nccl"
    with pytest.raises(ValueError):
        RuntimeConfig(all_reduce="mpi")
