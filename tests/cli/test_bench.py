"""`autodeploy bench` on a tiny random model with the cpu recipe: one real run, JSON, plot, --compare."""

from __future__ import annotations

import json

import pytest

from autodeploy.cli.main import main
from autodeploy.profiler.compare import changes, regressions
from tests.helpers.tiny_models import save_tiny

FIXED = ["fixed b=1 in=8 out=4", "fixed b=2 in=8 out=4"]
SERVE = "serve n=3 rate=inf in=8 out=4"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One bench run; --compare against a baseline claiming 10x our throughput (an injected regression)."""
    d = tmp_path_factory.mktemp("bench")
    model_dir = save_tiny("llama", d / "tiny")
    baseline = {"version": 1, "optimize_s": 1e6,  # we are faster: an improvement, not a regression
                "workloads": [{"name": FIXED[0], "tokens_per_s": 1e9, "ttft_ms": 1e6}]}
    (d / "base.json").write_text(json.dumps(baseline))
    argv = ["bench", f"random:{model_dir}", "--recipe", "cpu", "--input-len", "8", "--output-len", "4",
            "--batch-sizes", "1,2", "--serve-requests", "3", "--rate", "inf", "--baselines", "eager",
            "--json", str(d / "out.json"), "--plot", str(d / "out.png"), "--compare", str(d / "base.json"),
            "--threshold", "5", "--set", f"runtime.seed=3"]
    code = main(argv)
    return code, d


def test_bench_writes_a_complete_json(bench_run):
    code, d = bench_run
    result = json.loads((d / "out.json").read_text())
    assert result["recipe"] == "cpu" and result["device"] and result["optimize_s"] > 0
    assert result["roofline"]["bandwidth"] > 0 and result["roofline"]["weight_bytes"] > 0
    # the embedding table is not read whole per step
    assert result["roofline"]["weight_bytes"] < result["roofline"]["param_bytes"]
    names = [w["name"] for w in result["workloads"]]
    assert names == FIXED + [SERVE]
    for w in result["workloads"]:
        assert "error" not in w, w
        assert w["completed"] == w["num_requests"] and w["failed"] == 0
        assert w["output_tokens"] == 4 * w["num_requests"]
        assert w["ttft_ms"] > 0 and w["tpot_ms"] > 0 and w["tokens_per_s"] > 0 and w["peak_memory_gb"] > 0
    for w in result["workloads"][:2]:
        assert 0 < w["pct_roofline"] and w["roofline_tokens_per_s"] > 0
        base = w["baselines"]["eager"]
        assert "error" not in base, base
        assert base["output_tokens"] == 4 * w["batch_size"] and base["tokens_per_s"] > 0
        assert base["speedup"] == pytest.approx(w["tokens_per_s"] / base["tokens_per_s"])
    assert (d / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_injected_regression_exits_non_zero(bench_run):
    code, d = bench_run
    assert code == 1
    result = json.loads((d / "out.json").read_text())
    regs = regressions(result, json.loads((d / "base.json").read_text()), 5)
    assert [(r.workload, r.metric) for r in regs] == [(FIXED[0], "tokens_per_s")]
    assert regressions(result, result, 5) == []  # the same run against itself: nothing


def test_compare_directions_and_threshold():
    base = {"optimize_s": 10.0, "workloads": [{"name": "w", "tokens_per_s": 100.0, "tpot_ms": 10.0, "ttft_ms": 50.0}]}
    cur = {"optimize_s": 10.4, "workloads": [{"name": "w", "tokens_per_s": 96.0, "tpot_ms": 10.6, "ttft_ms": 40.0},
                                             {"name": "new", "tokens_per_s": 1.0}]}
    by = {(c.workload, c.metric): c.pct for c in changes(cur, base)}
    assert by == pytest.approx({("(run)", "optimize_s"): -4.0, ("w", "tokens_per_s"): -4.0, ("w", "tpot_ms"): -6.0,
                                ("w", "ttft_ms"): 20.0})
    assert [(r.workload, r.metric) for r in regressions(cur, base, 5)] == [("w", "tpot_ms")]
    assert regressions(cur, base, 7) == []


def test_bad_compare_file_fails_before_running(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["bench", "random:/nonexistent", "--compare", str(bad)]) == 1
    assert "no 'workloads' list" in capsys.readouterr().err


@pytest.mark.parametrize("args, msg", [
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--rate", "0"], "--rate"),
    (["--baselines", "vllm"], "unknown baseline 'vllm'"),
])
def test_bad_options_are_one_line_errors(args, msg, capsys):
    assert main(["bench", "random:/nonexistent", *args]) == 1
    assert msg in capsys.readouterr().err
