"""`autodeploy recipes list|show`."""

from __future__ import annotations

import typer

from autodeploy.cli import common

app = typer.Typer(help="List and show the shipped recipes.", no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """List shipped recipes with their descriptions."""
    from rich.table import Table

    from autodeploy.recipe import list_recipes, load_recipe

    table = Table(title="Recipes")
    for col in ("name", "device", "dtype", "compile", "description"):
        table.add_column(col)
    for name in list_recipes():
        r = load_recipe(name)
        table.add_row(name, r.runtime.device, r.runtime.dtype, r.runtime.compile_backend, r.description)
    common.out_console().print(table)


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Recipe name or YAML path."),
    resolved: bool = typer.Option(False, "--resolved", help="Show every field, defaults included."),
) -> None:
    """Print a recipe's YAML (or, with --resolved, the full merged recipe)."""
    import yaml

    from autodeploy.recipe import load_recipe, resolve_recipe_path

    if resolved:
        rec = load_recipe(name)
        data = rec.model_dump(mode="json")
        typer.echo(yaml.safe_dump(data, sort_keys=False))
    else:
        load_recipe(name)  # validate first: errors name the key
        typer.echo(resolve_recipe_path(name).read_text())
