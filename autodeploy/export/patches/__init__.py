"""Context-managed patches that make HF models exportable, one per file.

Each patch module defines `applies(model) -> bool` and a context manager `patch(model)`, and
says in its docstring which HF quirk it works around and why. `apply_patches(model)` enters all
that apply, in file-name order, and undoes them on exit.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from types import ModuleType
from typing import Iterator

from torch import nn


def patch_modules() -> list[ModuleType]:
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods


@contextlib.contextmanager
def apply_patches(model: nn.Module) -> Iterator[list[str]]:
    applied: list[str] = []
    with contextlib.ExitStack() as stack:
        for mod in patch_modules():
            if mod.applies(model):
                stack.enter_context(mod.patch(model))
                applied.append(mod.__name__.rsplit(".", 1)[-1])
        yield applied
