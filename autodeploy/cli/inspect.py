"""`autodeploy inspect`: what autodeploy sees in a model (config facts checked against the graph)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from autodeploy.cli import common


def inspect_cmd(
    source: str = common.SOURCE,
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    top_ops: int = typer.Option(15, "--top-ops", help="Rows of the op histogram in the table view."),
) -> None:
    """Export the model (no weights loaded) and report its architecture and op histogram."""
    from rich.table import Table

    from autodeploy import progress
    from autodeploy.api import export_source, prepare
    from autodeploy.models.detect import detect_architecture

    if not as_json:
        progress.enable_console(common.err_console())
    src, rec = prepare(source, recipe, dict(_parse(set_)))
    gm = export_source(src, rec)
    info = detect_architecture(src.config, gm)
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    table = Table(title=f"{source}", show_header=False)
    for key, value in info.as_dict().items():
        if key in ("op_histogram", "warnings"):
            continue
        table.add_row(key, "-" if value is None else str(value))
    out = common.out_console()
    out.print(table)
    ops = Table(title="Exported graph ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in list(info.op_histogram.items())[:top_ops]:
        ops.add_row(op, str(n))
    out.print(ops)
    for w in info.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}")


def _parse(items):
    from autodeploy.recipe import parse_override

    return [parse_override(i) for i in items or []]
