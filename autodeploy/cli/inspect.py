"""`autodeploy inspect`: what autodeploy sees in a model (config facts checked against the graph)."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from autodeploy.cli import common


def inspect_cmd(
    source: str = common.SOURCE,
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (architecture, op histogram, warnings) instead of tables."),
    top_ops: int = typer.Option(15, "--top-ops", help="Rows of the op histogram in the table view."),
) -> None:
    """Export the model on the meta device (no weights read) and report its architecture and op histogram."""
    from rich.markup import escape

    from autodeploy import progress
    from autodeploy.api import export_source
    from autodeploy.models.detect import detect_architecture
    from autodeploy.models.source import resolve_source
    from autodeploy.recipe import load_recipe

    if not as_json:
        progress.enable_console(common.err_console())
    rec = load_recipe(recipe, set_ or [])
    with progress.step(f"Resolving {source}"):
        # the graph needs the config only: a folder without weights can be inspected too
        src = resolve_source(source, trust_remote_code=rec.model.trust_remote_code, check_weights=False)
    gm = export_source(src, rec)
    info = detect_architecture(src.config, gm)
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    out = common.out_console()
    out.print(_arch_table(source, info))
    out.print(_ops_table(info.op_histogram, top_ops))
    for w in info.warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)


def _show(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "moe":
        shared = f", {value['shared_experts']} shared" if value.get("shared_experts") else ""
        return f"{value['experts']} experts, top-{value['top_k']}{shared}"
    if key == "rope_theta":
        return f"{value:g}"
    return str(value)


def _arch_table(title: str, info):
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.as_dict().items():
        if key not in ("op_histogram", "warnings"):
            table.add_row(key, _show(key, value))
    checked = "graph agrees with the config" if not info.warnings else f"{len(info.warnings)} mismatch(es), see below"
    table.add_row("checked", checked)
    return table


def _ops_table(histogram: dict[str, int], top: int):
    from rich.table import Table

    table = Table(title=f"Exported graph ops ({sum(histogram.values())} calls, {len(histogram)} kinds)")
    table.add_column("op")
    table.add_column("count", justify="right")
    for op, n in list(histogram.items())[:top]:
        table.add_row(op, str(n))
    if len(histogram) > top:
        table.add_row(f"… {len(histogram) - top} more (--top-ops)", "")
    return table
