"""`autodeploy bench`: TTFT / TPOT / throughput / memory / % of roofline, against transformers, in one run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common


def _ints(text: str, flag: str) -> list[int]:
    from autodeploy.errors import AutoDeployError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AutoDeployError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,16") from None
    if not values or any(v < 1 for v in values):
        raise AutoDeployError(f"{flag} {text!r}: expected positive integers")
    return values


def bench_cmd(
    source: str = common.SOURCE,
    recipe: str = typer.Option("h100", "--recipe", "-r", help="Recipe name or YAML path."),
    set_: Optional[list[str]] = common.SET,
    input_len: int = typer.Option(128, "--input-len", min=1, help="Prompt tokens of each request."),
    output_len: int = typer.Option(256, "--output-len", min=1, help="New tokens of each request (EOS ignored)."),
    batch_sizes: str = typer.Option("1,16", "--batch-sizes", help="Fixed-length workloads: requests submitted at once."),
    serve_requests: int = typer.Option(0, "--serve-requests", min=0, help="Serving run: this many requests (0: none)."),
    rate: str = typer.Option("inf", "--rate", help="Serving arrivals per second (Poisson); inf: all at once."),
    serve_input_len: Optional[int] = typer.Option(None, "--serve-input-len", min=1, help="Serving prompt length (default --input-len)."),
    serve_output_len: Optional[int] = typer.Option(None, "--serve-output-len", min=1, help="Serving output length (default --output-len)."),
    baselines: str = typer.Option("eager,static", "--baselines", help="transformers baselines: eager, static (comma-separated)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the transformers baselines."),
    no_autotune: bool = typer.Option(False, "--no-autotune", help="Skip autotuning: each op takes its preferred backend."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="A short run of each workload's shape before timing."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random prompts."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot of throughput (needs matplotlib)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A previous --json result: report regressions."),
    threshold: float = typer.Option(5.0, "--threshold", min=0, help="Regression threshold for --compare, in percent."),
    world_size: Optional[int] = common.WORLD_SIZE,
) -> None:
    """Benchmark the optimized model: fixed batches, a serving run, and transformers baselines."""
    from autodeploy.errors import AutoDeployError
    from autodeploy.profiler import report
    from autodeploy.profiler.baselines import MODES
    from autodeploy.profiler.bench import BenchConfig, run_bench
    from autodeploy.profiler.compare import load_result, regressions

    try:
        rate_v = math.inf if rate.strip().lower() in ("inf", "infinity") else float(rate)
    except ValueError:
        raise AutoDeployError(f"--rate {rate!r}: expected a number of requests per second or inf") from None
    if rate_v <= 0:
        raise AutoDeployError(f"--rate {rate}: must be > 0 (inf submits all at once)")
    modes = [] if no_baselines else [m.strip() for m in baselines.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise AutoDeployError(f"--baselines: unknown baseline '{bad[0]}' (known: {', '.join(MODES)})")
    previous = load_result(compare) if compare else None  # a bad file fails before the long run

    if common.spawned_ranks(world_size):
        return
    cfg = BenchConfig(source=source, recipe=recipe, overrides=common.rank_overrides(set_, world_size), batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                      input_len=input_len, output_len=output_len, serve_requests=serve_requests, rate=rate_v,
                      serve_input_len=serve_input_len, serve_output_len=serve_output_len, baselines=modes,
                      autotune=not no_autotune, warmup=warmup, seed=seed)
    common.enable_progress()
    result = run_bench(cfg)
    if result is None:  # a rank other than 0 of a sharded run: it ran rank 0's steps
        return
    out = common.out_console()
    if out.width < 150:  # a pipe reports 80 columns: keep the table's rows on one line each in logs
        out.width = 150
    out.print(report.summary_table(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2, default=str))
        out.print(f"result written to {json_out}")
    if plot_out:
        try:
            out.print(f"plot written to {report.plot(result, plot_out)}")
        except AutoDeployError as e:
            common.err_console().print(f"[yellow]warning:[/yellow] {e}")
    failed = [w["name"] for w in result["workloads"] if w.get("error")]
    if previous is not None:
        regs = regressions(result, previous, threshold)
        if regs:
            out.print(report.regression_table(regs, threshold))
            raise typer.Exit(1)
        out.print(f"no regression beyond {threshold:g}% against {compare}")
    if failed:
        common.err_console().print(f"[red]error:[/red] workload(s) failed: {', '.join(failed)}")
        raise typer.Exit(1)
