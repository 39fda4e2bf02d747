"""Progress output: steps on the CLI console, transformers' own bars and logs off while it is on."""

from __future__ import annotations

import logging

from rich.console import Console
from transformers import modeling_gguf_pytorch_utils as gguf_utils
from transformers.utils import logging as hf_logging

from autodeploy import progress


def test_console_steps_and_transformers_silenced():
    hf_logging.enable_progress_bar()
    before_verbosity, before_tqdm = hf_logging.get_verbosity(), gguf_utils.tqdm
    console = Console(record=True, width=120)
    progress.enable_console(console)
    try:
        assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert gguf_utils.tqdm is not before_tqdm  # the GGUF loader's plain tqdm is muted too
        assert gguf_utils.tqdm([1, 2]).disable
        with progress.step("Exporting"):
            pass
        progress.warn("something odd")
    finally:
        progress.disable_console()
    text = console.export_text()
    assert "✓ Exporting" in text and "warning: something odd" in text
    assert hf_logging.is_progress_bar_enabled()
    assert hf_logging.get_verbosity() == before_verbosity and gguf_utils.tqdm is before_tqdm


def test_without_console_steps_are_logged(caplog):
    with caplog.at_level(logging.INFO, logger="autodeploy"):
        with progress.step("Loading weights"):
            pass
    assert "Loading weights" in caplog.text


def test_quiet_transformers_restores_state():
    hf_logging.enable_progress_bar()
    with progress.quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
