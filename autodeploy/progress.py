"""Progress reporting for long steps (load, export, transforms).

Library code calls `step("Exporting")` as a context manager. The CLI turns on a rich spinner on
stderr with `enable_console()`; otherwise each step is logged at INFO with its duration, so the
Python API stays quiet unless the user configures logging.

While the console is on, transformers' own tqdm bars ("Loading weights", "Converting and
de-quantizing GGUF tensors") and its info/warning logs are off: our step line already says what
runs, and a bar per step would interleave with the spinner.
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
    _set_transformers_quiet(True)
    return _console


def console() -> Console | None:
    return _console


def disable_console() -> None:
    """Back to logging only (the CLI calls this when a command ends, so in-process callers start clean)."""
    global _console
    if _console is not None:
        _set_transformers_quiet(False)
    _console = None


_saved: tuple | None = None  # transformers' state before enable_console()


def _transformers_state() -> tuple:
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity(), getattr(gguf_utils, "tqdm", None)


def _restore_transformers(state: tuple) -> None:
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars, verbosity, gguf_tqdm = state
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
    hf_logging.set_verbosity(verbosity)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = gguf_tqdm


def _silence_transformers() -> None:
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # The GGUF loader uses plain tqdm, which disable_progress_bar() does not reach.
    if hasattr(gguf_utils, "tqdm") and not isinstance(gguf_utils.tqdm, functools.partial):
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)


def _set_transformers_quiet(quiet: bool) -> None:
    global _saved
    if quiet:
        if _saved is None:
            _saved = _transformers_state()
        _silence_transformers()
    elif _saved is not None:
        _restore_transformers(_saved)
        _saved = None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and logs off for a block (a step that calls into it)."""
    state = _transformers_state()
    _silence_transformers()
    try:
        yield
    finally:
        _restore_transformers(state)


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
