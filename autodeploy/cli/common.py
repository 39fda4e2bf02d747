"""Options and helpers shared by the subcommands."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from rich.console import Console


@dataclass
class _State:
    debug: bool = False


STATE = _State()
_ERR: Console | None = None


def err_console() -> Console:
    global _ERR
    if _ERR is None:
        _ERR = Console(stderr=True)
    return _ERR


def out_console() -> Console:
    return Console()


SOURCE = typer.Argument(
    ...,
    help="Model: hub id (org/name), local folder, .gguf file, example:smollm2, or random:<shape|config>.",
    show_default=False,
)
RECIPE = typer.Option("cpu", "--recipe", "-r", help="Recipe name (see `autodeploy recipes list`) or a YAML path.")
SET = typer.Option(
    None, "--set", "-s", help="Override a recipe field, e.g. --set runtime.max_batch_size=4 (repeatable)."
)
DUMP = typer.Option(None, "--dump-graphs", help="Write each stage's graph as text into this directory.")
