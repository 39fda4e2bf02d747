"""Autotuner selection and persistence, with a fake clock (never asserting on real speed)."""

from __future__ import annotations

import json

import pytest
import torch

from autodeploy.profiler.autotuner import Autotuner, Candidate, device_key


def _fake_clock(times: dict[str, float], calls: list[str]):
    def measure(cand: Candidate, inputs) -> float:
        calls.append(cand.name)
        if times[cand.name] is None:
            raise RuntimeError("kernel does not support this shape")
        return times[cand.name]

    return measure


CANDS = [Candidate("triton", lambda x: x), Candidate("torch", lambda x: x), Candidate("torch-compile", lambda x: x)]


def test_fastest_candidate_wins_and_is_persisted(tmp_path):
    path, calls = tmp_path / "autotune.json", []
    tuner = Autotuner(path, measure=_fake_clock({"triton": 3e-5, "torch": 1e-5, "torch-compile": 2e-5}, calls), key="gpu-a")
    made = []
    pick = tuner.choose("rmsnorm", "x=[16,64]:float32", CANDS, lambda: made.append(1) or (torch.ones(2),))
    assert pick == "torch" and calls == ["triton", "torch", "torch-compile"] and made == [1]
    data = json.loads(path.read_text())
    entry = data["gpu-a"]["rmsnorm"]["x=[16,64]:float32"]
    assert entry["choice"] == "torch"
    assert entry["times_ms"] == pytest.approx({"triton": 0.03, "torch": 0.01, "torch-compile": 0.02})


def test_next_run_reuses_the_choice_without_timing(tmp_path):
    path = tmp_path / "autotune.json"
    Autotuner(path, measure=_fake_clock({"triton": 1.0, "torch": 2.0, "torch-compile": 3.0}, []), key="gpu-a").choose(
        "rope", "b1", CANDS, lambda: ())
    calls: list[str] = []
    again = Autotuner(path, measure=_fake_clock({"triton": 9.0, "torch": 1.0, "torch-compile": 1.0}, calls), key="gpu-a")
    assert again.choose("rope", "b1", CANDS, lambda: ()) == "triton"
    assert calls == [] and again.hits == 1 and again.tuned == 0
    # another bucket of the same op is timed
    assert again.choose("rope", "b16", CANDS, lambda: ()) in ("torch", "torch-compile")
    assert again.tuned == 1


def test_other_machine_or_new_candidate_retunes(tmp_path):
    path = tmp_path / "autotune.json"
    times = {"triton": 1.0, "torch": 2.0, "torch-compile": 3.0, "triton:BLOCK=256": 0.5}
    Autotuner(path, measure=_fake_clock(times, []), key="gpu-a").choose("op", "b", CANDS[:2], lambda: ())
    calls: list[str] = []
    other = Autotuner(path, measure=_fake_clock(times, calls), key="gpu-b | torch 9")
    assert other.choose("op", "b", CANDS[:2], lambda: ()) == "triton" and calls == ["triton", "torch"]
    calls.clear()
    more = Autotuner(path, measure=_fake_clock(times, calls), key="gpu-a")
    cands = CANDS[:2] + [Candidate("triton:BLOCK=256", lambda: None)]
    assert more.choose("op", "b", cands, lambda: ()) == "triton:BLOCK=256" and len(calls) == 3
    data = json.loads(path.read_text())
    assert set(data) == {"gpu-a", "gpu-b | torch 9"}  # both machines' choices kept side by side


def test_failing_candidate_loses_and_ties_go_to_the_preferred(tmp_path):
    tuner = Autotuner(tmp_path / "a.json", measure=_fake_clock({"triton": None, "torch": 1.0, "torch-compile": 1.0}, []),
                      key="k")
    assert tuner.choose("op", "b", CANDS, lambda: ()) == "torch"
    assert tuner.entry("op", "b")["times_ms"]["triton"] is None
    all_fail = Autotuner(tmp_path / "b.json", measure=_fake_clock({"triton": None, "torch": None, "torch-compile": None}, []),
                         key="k")
    assert all_fail.choose("op", "b", CANDS, lambda: ()) == "triton"  # nothing ran: keep the default


def test_no_autotune_takes_the_first_and_writes_nothing(tmp_path):
    path, calls = tmp_path / "autotune.json", []
    tuner = Autotuner(path, enabled=False, measure=_fake_clock({"triton": 9.0, "torch": 1.0, "torch-compile": 1.0}, calls))
    assert tuner.choose("op", "b", CANDS, lambda: ()) == "triton"
    tuner.save()
    assert calls == [] and not path.exists()


def test_corrupt_cache_is_rebuilt(tmp_path):
    path = tmp_path / "autotune.json"
    path.write_text("{not json")
    tuner = Autotuner(path, measure=_fake_clock({"triton": 2.0, "torch": 1.0, "torch-compile": 3.0}, []), key="k")
    assert tuner.choose("op", "b", CANDS, lambda: ()) == "torch"
    assert json.loads(path.read_text())["k"]["op"]["b"]["choice"] == "torch"


def test_real_timing_path_runs_every_candidate(tmp_path):
    """Real clock on tiny CPU candidates: only that a choice is made and times are recorded."""
    ran = {"add": 0, "mul": 0}

    def add(x):
        ran["add"] += 1
        return x + 1

    def mul(x):
        ran["mul"] += 1
        return x * 2

    tuner = Autotuner(tmp_path / "t.json", warmup=1, reps=3)
    pick = tuner.choose("toy", "x=[8]", [Candidate("add", add), Candidate("mul", mul)], lambda: (torch.ones(8),))
    assert pick in ("add", "mul") and ran == {"add": 4, "mul": 4}
    times = tuner.entry("toy", "x=[8]")["times_ms"]
    assert set(times) == {"add", "mul"} and all(t >= 0 for t in times.values())
    assert tuner.key == device_key("cpu") and tuner.key.startswith("cpu | torch ")


def test_pdl_margin_keeps_overlapping_kernels_within_reach():
    from autodeploy.profiler.autotuner import pick

    names = ["torch", "triton", "cublas+act"]
    us = lambda **t: {k.replace("_", "+"): v * 1e-6 for k, v in t.items()}  # noqa: E731
    pdl = {"triton"}
    # the H200 TP=2 gate_up: cuBLAS + act ahead by 0.4% alone, slower in the step: the Triton GEMV stays
    assert pick(names, us(torch=35.25, triton=32.58, cublas_act=32.45), pdl, pdl_on=True) == "triton"
    assert pick(names, us(torch=35.25, triton=32.58, cublas_act=32.45), pdl, pdl_on=False) == "cublas+act"
    # far enough ahead (more than 10% and 2 us), cuBLAS wins anyway: the 8B o_proj, 10.19 vs 16.86 us
    assert pick(["torch", "triton"], us(torch=10.19, triton=16.86), pdl, pdl_on=True) == "torch"
    # small kernels: the absolute 2 us decides (1.5 vs 3.2 us: 1.7 us apart)
    assert pick(["torch", "triton"], us(torch=1.5, triton=3.2), pdl, pdl_on=True) == "triton"
    # a failed PDL candidate (inf) is no alternative; every candidate failing falls back to the first
    assert pick(["torch", "triton"], {"torch": 1e-5, "triton": float("inf")}, pdl, pdl_on=True) == "torch"
    assert pick(["torch", "triton"], {"torch": float("inf"), "triton": float("inf")}, pdl, pdl_on=True) == "torch"


def test_cold_copies_read_twice_the_l2_between_uses_of_one_set():
    from autodeploy.profiler.autotuner import COLD_MAX_COPIES, cold_copies, cold_input_sets

    l2 = 60 << 20  # an H200's
    assert cold_copies(25 << 20, l2) == 6  # a TP=2 qkv shard: 5 others (125 MB) pass before it comes back
    assert cold_copies(100 << 20, l2) == 3
    assert cold_copies(8 << 10, l2) == COLD_MAX_COPIES  # small inputs: capped (their bytes hardly matter)
    assert cold_copies(120 << 20, l2) == cold_copies(1 << 30, l2) == 1  # lm_head: reading it once evicts
    assert cold_copies(0, l2) == 1
    x = torch.ones(4)
    assert cold_input_sets((x, 3), torch.device("cpu")) == [(x, 3)]  # the CPU has no L2 to dodge
