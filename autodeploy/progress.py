"""Progress reporting for long steps (load, export, transforms).

Library code calls `step("Exporting")` as a context manager. The CLI turns on a rich spinner on
stderr with `enable_console()`; otherwise each step is logged at INFO with its duration, so the
Python API stays quiet unless the user configures logging.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from rich.console import Console

log = logging.getLogger("autodeploy")

_console: Console | None = None


def enable_console(console: Console | None = None) -> Console:
    global _console
    _console = console or Console(stderr=True)
    return _console


def console() -> Console | None:
    return _console


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    t0 = time.perf_counter()
    if _console is not None:
        with _console.status(f"[bold]{description}…"):
            yield
        _console.print(f"[green]✓[/green] {description} [dim]({time.perf_counter() - t0:.1f} s)[/dim]")
    else:
        yield
        log.info("%s (%.1f s)", description, time.perf_counter() - t0)


def warn(message: str) -> None:
    """A warning the user should see: on the console when enabled, else through logging."""
    if _console is not None:
        _console.print(f"[yellow]warning:[/yellow] {message}")
    else:
        log.warning(message)
