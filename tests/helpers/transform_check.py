"""The one helper every transform test goes through.

`check_transform` exports a module with dynamic dims, runs one transform (by registry name) via the
pipeline, then checks: the ops expected before are there, the ops expected after are there and the
replaced ones gone, the exact match count, and numerics against eager at the export shape and at a
second shape through the dynamic dims.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import fx, nn

from autodeploy.graph import nodes_of
from autodeploy.recipe import load_recipe
from autodeploy.transforms.pipeline import TransformContext, run_pipeline
from tests.helpers.tolerances import assert_close


def export_module(module: nn.Module, inputs: Sequence[torch.Tensor], dynamic_shapes: Any = None) -> fx.GraphModule:
    ep = torch.export.export(module, tuple(inputs), dynamic_shapes=dynamic_shapes, strict=False)
    return ep.module()


def count(gm: fx.GraphModule, op) -> int:
    return len(nodes_of(gm, op))


def run_transforms(gm: fx.GraphModule, names: list[str], hf_config=None, recipe=None, **ctx_extra):
    rec = recipe or load_recipe("cpu")
    ctx = TransformContext(recipe=rec, hf_config=hf_config, extra=dict(ctx_extra))
    infos = run_pipeline(gm, ctx, only=names)
    return {i.name: i for i in infos if i.name in names}


def check_transform(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    transform: str | list[str],
    *,
    before: dict[Any, int],
    after: dict[Any, int],
    matches: int | None = None,
    second_inputs: Sequence[torch.Tensor] | None = None,
    dynamic_shapes: Any = None,
    dtype: torch.dtype = torch.float32,
    recipe=None,
    hf_config=None,
    run_first: list[str] | None = None,
    compare=None,
) -> fx.GraphModule:
    """Returns the transformed graph. `before`/`after` map op -> exact count (0 means absent).

    `compare(actual, expected)` replaces the dtype tolerance check where the transform changes the
    numerics on purpose (quantization: an SQNR floor)."""
    names = [transform] if isinstance(transform, str) else list(transform)
    module = module.eval()
    gm = export_module(module, inputs, dynamic_shapes)
    if run_first:
        run_transforms(gm, run_first, hf_config, recipe)
    for op, n in before.items():
        assert count(gm, op) == n, f"before {names}: expected {n} x {op}, found {count(gm, op)}"
    infos = run_transforms(gm, names, hf_config, recipe)
    for op, n in after.items():
        assert count(gm, op) == n, f"after {names}: expected {n} x {op}, found {count(gm, op)}"
    if matches is not None:
        got = sum(infos[n].matches for n in names)
        assert got == matches, f"{names}: expected {matches} matches, got {got}"
    with torch.no_grad():
        for args in [inputs] + ([second_inputs] if second_inputs is not None else []):
            expected = module(*args)
            actual = gm(*args)
            exp_list = expected if isinstance(expected, (tuple, list)) else [expected]
            act_list = actual if isinstance(actual, (tuple, list)) else [actual]
            for a, e in zip(act_list, exp_list):
                if compare is not None:
                    compare(a, e)
                else:
                    assert_close(a, e, dtype)
    return gm
