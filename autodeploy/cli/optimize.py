"""`autodeploy optimize`: export, transform and load; print the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common


def optimize_cmd(
    source: str = common.SOURCE,
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    dump_graphs: Optional[Path] = common.DUMP,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
) -> None:
    """Export the model, run the recipe's transforms, load the weights, and print the transform report."""
    import json

    from rich.table import Table

    from autodeploy import progress
    from autodeploy.api import optimize
    from autodeploy.transforms.pipeline import report_table

    progress.enable_console(common.err_console())
    rt = optimize(source, recipe, overrides=set_ or [], dump_graphs=dump_graphs)
    out = common.out_console()
    out.print(report_table(rt.report))
    summary = Table(title="Optimized", show_header=False)
    summary.add_row("model", f"{rt.source.spec} ({rt.arch.architecture})")
    summary.add_row("recipe", f"{rt.recipe.name}: {rt.recipe.runtime.device}, {rt.recipe.runtime.dtype}")
    summary.add_row("graph nodes", str(len(rt.graph_module.graph.nodes)))
    for k, v in rt.timings.items():
        summary.add_row(k, f"{v:.2f}")
    out.print(summary)
    if dump_graphs:
        out.print(f"graphs written to {dump_graphs}")
    if json_out:
        json_out.write_text(json.dumps({"transforms": [i.as_dict() for i in rt.report], "timings": rt.timings}, indent=2))
