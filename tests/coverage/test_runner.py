"""A failing architecture is reported with its stage and reason; one crash or hang never ends the run.

The runner forks one child per architecture, so faults injected here with monkeypatch (before the
fork) happen inside the child, at the stage under test.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from autodeploy.coverage import tiny_config, worker
from autodeploy.coverage.archs import causal_lm_archs
from autodeploy.coverage.runner import run_archs
from autodeploy.transforms.pipeline import registry

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="faults are injected into forked children")


def run_one(arch: str = "llama", timeout: float = 120.0):
    (result,) = run_archs(causal_lm_archs([arch]), jobs=1, timeout=timeout)
    return result


def test_export_failure_names_stage_and_op(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported op aten.frobnicate.default")

    monkeypatch.setattr(torch.export, "export", refuse)
    r = run_one()
    assert r.status == "export"
    assert "aten.frobnicate.default" in r.reason


def test_transform_failure_names_the_transform(monkeypatch):
    def broken(gm, ctx, cfg):
        raise KeyError("no such node")

    monkeypatch.setattr(registry()["match_rope"], "apply", broken)
    r = run_one()
    assert r.status == "transform"
    assert r.reason.startswith("match_rope: KeyError") and "no such node" in r.reason


def test_token_mismatch_says_where(monkeypatch):
    real = worker.reference_generate

    def shifted(model, prompt):
        tokens, logits = real(model, prompt)
        return tokens[:3] + [(tokens[3] + 1) % 256] + tokens[4:], logits

    monkeypatch.setattr(worker, "reference_generate", shifted)
    r = run_one()
    assert r.status == "mismatch" and r.path == "kv-cache"
    assert r.reason.startswith("prompt 0 step 3:")
    assert r.matches["attention"] == 2  # the pipeline ran: the counts are still reported


def test_hang_is_killed_at_its_stage(monkeypatch):
    monkeypatch.setattr(tiny_config, "tiny_config", lambda arch: time.sleep(60))
    t0 = time.perf_counter()
    r = run_one(timeout=3)
    assert time.perf_counter() - t0 < 30
    assert (r.status, r.reason) == ("config", "timed out after 3 s")


def test_crash_is_reported_and_the_run_goes_on(monkeypatch):
    def segfault(cfg, workdir):
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(worker, "build_reference", segfault)
    crashed, skipped = run_archs(causal_lm_archs(["llama", "bart"]), jobs=1, timeout=60)
    assert (crashed.status, crashed.reason) == ("build", "process killed by SIGSEGV")
    assert skipped.status == "skipped"
