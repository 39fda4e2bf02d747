"""`autodeploy coverage`: every decoder-only *ForCausalLM of the installed transformers, end to end on the CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common


def _status_line(r) -> str:
    from rich.markup import escape

    if r.status == "pass":
        return f"[green]pass[/green] {r.arch} [dim]({r.path}, {r.seconds:.0f} s)[/dim]"
    if r.status == "skipped":
        return f"[dim]skip {r.arch}: {escape(r.reason[:100])}[/dim]"
    return f"[red]{r.status}[/red] {r.arch} [dim]({r.seconds:.0f} s)[/dim]: {escape(r.reason[:160])}"


def coverage_cmd(
    archs: Optional[str] = typer.Option(
        None, "--archs", "-a", help="Comma-separated model_types (default: every *ForCausalLM of transformers)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the markdown table here (default: stdout)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every result as JSON here."),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Architectures run at once, one process each."),
    timeout: float = typer.Option(180.0, "--timeout", min=1.0, help="Seconds before one architecture's run is killed."),
) -> None:
    """Build a tiny random model of each architecture, run it through the CPU pipeline, compare greedy
    tokens with transformers, and write the table (status or failing stage, path, matches, reason)."""
    from autodeploy.coverage.archs import causal_lm_archs
    from autodeploy.coverage.report import environment, markdown, summary, to_json, write
    from autodeploy.coverage.runner import run_archs

    err = common.err_console()
    only = [a.strip() for a in archs.split(",") if a.strip()] if archs else None
    selected = causal_lm_archs(only)
    t0 = time.perf_counter()
    results = run_archs(selected, jobs=jobs, timeout=timeout,
                        on_result=lambda r: err.print(_status_line(r), highlight=False))
    seconds = time.perf_counter() - t0
    env = environment()
    text = markdown(results, env, seconds)
    if out is not None:
        write(out, text)
    else:
        common.out_console().print(text, markup=False, highlight=False, soft_wrap=True)
    if json_path is not None:
        write(json_path, to_json(results, env, seconds))
    s = summary(results)
    err.print(f"{s['pass']} of {s['run']} architectures pass ({s['pass_kv_cache']} with the KV cache), "
              f"{s['skipped']} skipped, {seconds / 60:.1f} min" + (f"; table in {out}" if out else ""), highlight=False)
