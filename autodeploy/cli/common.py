"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import typer
from rich.console import Console


@dataclass
class _State:
    debug: bool = False
    argv: list[str] = field(default_factory=list)  # the command line, for --world-size to re-launch


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
WORLD_SIZE = typer.Option(
    None, "--world-size", min=1,
    help="Split the model over N devices (tensor / expert parallel): spawns N ranks on this host "
         "(under torchrun it must match WORLD_SIZE).",
)


def spawned_ranks(world_size: int | None) -> bool:
    """--world-size N outside a launcher: run this command line as N ranks here; True when they ran."""
    from autodeploy.distributed.launch import spawn, under_launcher

    if world_size is None or world_size <= 1 or under_launcher():
        return False
    code = spawn(STATE.argv, world_size)
    if code:
        raise typer.Exit(code)
    return True


def rank_overrides(set_: list[str] | None, world_size: int | None) -> list[str]:
    return list(set_ or []) + ([f"runtime.world_size={world_size}"] if world_size else [])


def enable_progress() -> None:
    """The step spinner on stderr, on rank 0 only (every rank of a torchrun job shares the terminal)."""
    from autodeploy import progress

    if os.environ.get("RANK", "0") == "0":
        progress.enable_console(err_console())


def followed(rt) -> bool:
    """On a rank other than 0 of a sharded run: follow rank 0's steps until it stops; True then."""
    from autodeploy.distributed.launch import follow_if_worker

    return follow_if_worker(rt)
