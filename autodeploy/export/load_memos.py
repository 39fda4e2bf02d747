"""Memos that make `torch.export.load` of a cached program cheaper, same program out.

torch's deserializer turns the saved JSON back into schema dataclasses and, per node, fake tensors
whose symbolic sizes it parses from strings. For the Llama-3.2-1B graph (16 layers, ~1.2k nodes)
two costs dominate and both repeat the same work thousands of times:

  - typing.get_type_hints per JSON object (~32k calls): the hints of a class never change;
  - sympy.sympify per symbolic size (~3.5k calls over a handful of distinct strings such as
    's27', '2048*s27'): sympy's parse_expr runs `exec('from sympy import *')` on every call,
    about 0.5 ms each, ~40% of the whole load under a profiler.

Each memo is active only while `memoized_load` runs and only for the exact call form the loader
uses; any other call passes through to the original function.
"""

from __future__ import annotations

import contextlib
import typing
from pathlib import Path
from typing import Iterator

import sympy
import torch
from sympy.core.parameters import global_parameters


def memoized_load(path: Path):
    """torch.export.load(path) with the memos below in place."""
    with type_hints_cached(), sympify_cached():
        return torch.export.load(path)


@contextlib.contextmanager
def type_hints_cached() -> Iterator[None]:
    """typing.get_type_hints memoized per class while the loader runs.

    Only the (class, globalns) form the loader uses is memoized; every other call passes through."""
    original = typing.get_type_hints
    memo: dict[tuple, tuple] = {}  # (class, id(globalns)) -> (globalns, hints)

    def get_type_hints(obj, globalns=None, localns=None, include_extras=False):
        if not isinstance(obj, type) or localns is not None or include_extras:
            return original(obj, globalns, localns, include_extras)
        key = (obj, id(globalns))
        if key not in memo:  # globalns is kept alive with its entry, so its id is not reused meanwhile
            memo[key] = (globalns, original(obj, globalns))
        return dict(memo[key][1])  # a copy: a caller may change what it gets

    typing.get_type_hints = get_type_hints
    try:
        yield
    finally:
        typing.get_type_hints = original


@contextlib.contextmanager
def sympify_cached() -> Iterator[None]:
    """sympy.sympify(text, locals=...) memoized per (text, locals) while the loader runs.

    The loader parses every symbolic size with the symbols known so far as `locals`; the parse of a
    string depends on nothing else, and sympy expressions are immutable, so equal inputs may share
    one result. The key holds the identity of every local (a new symbol under a known name is a new
    key), and the entry keeps those objects alive so their ids are not reused during the load."""
    original = sympy.sympify
    memo: dict[tuple, tuple] = {}  # (text, evaluate, ((name, id(obj)), ...)) -> (locals' objects, expr)

    def sympify(a, locals=None, convert_xor=True, strict=False, rational=False, evaluate=None):
        if type(a) is not str or not isinstance(locals, dict) or not convert_xor or strict or rational or evaluate is not None:
            return original(a, locals, convert_xor, strict, rational, evaluate)
        # sympy's global evaluate flag changes what a parse returns (`with evaluate(False)`)
        key = (a, global_parameters.evaluate, tuple((name, id(obj)) for name, obj in locals.items()))
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = (tuple(locals.values()), original(a, locals=locals))
        return hit[1]

    sympy.sympify = sympify
    try:
        yield
    finally:
        sympy.sympify = original
