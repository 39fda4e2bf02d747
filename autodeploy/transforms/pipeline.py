"""The transform pipeline: stages, the registry, and the shared work around each transform.

A transform is one module in `autodeploy/transforms/` whose file name is its registry key
(verb_object). It declares a stage, a pydantic config (extra="forbid", every field described)
and one function `apply(gm, ctx, cfg) -> TransformInfo`. It never calls another transform.

The pipeline does the rest: stage order, enable/skip, dead-code elimination (skipped when a
transform left the graph as the last cleanup did), one recompile at the end, shape propagation when
a transform asks for it, timing, a history in `gm.meta["autodeploy_history"]`, a report table, and
optional graph dumps (one text file per transform).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import fx

from autodeploy import progress


class Stage(enum.IntEnum):
    """Stages run in this order; transforms of one stage run in registration order."""

    CLEANUP = 0  # tidy the raw export (asserts, no-op casts)
    CANONICALIZE = 1  # HF spellings -> canonical autodeploy ops
    QUANTIZE = 2
    SHARD = 3
    FUSE = 4  # backend op selection, GEMM fusion
    CACHE = 5  # KV-cache insertion
    COMPILE = 6


class TransformConfig(BaseModel):
    """Base of every transform config; subclasses add their own described fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    enabled: bool = Field(True, description="Run this transform.")


@dataclass
class TransformInfo:
    """What one transform did. `matches` counts rewrites; `warning` explains a zero where one was expected."""

    name: str = ""
    stage: str = ""
    matches: int = 0
    changed: bool = False
    seconds: float = 0.0
    skipped: bool = False
    warning: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TransformContext:
    """What a transform may read besides the graph: the recipe, the model config and facts about it."""

    recipe: Any  # autodeploy.recipe.Recipe
    hf_config: Any = None  # transformers.PretrainedConfig
    arch: Any = None  # autodeploy.models.detect.ArchInfo, when detected
    extra: dict[str, Any] = field(default_factory=dict)


ApplyFn = Callable[[fx.GraphModule, TransformContext, TransformConfig], TransformInfo]


@dataclass
class TransformSpec:
    name: str
    stage: Stage
    config_cls: type[TransformConfig]
    apply: ApplyFn
    shape_prop: bool  # run FakeTensor shape propagation after this transform
    order: int


_REGISTRY: dict[str, TransformSpec] = {}
_LOADED = False


def register(stage: Stage, config: type[TransformConfig] = TransformConfig, *, shape_prop: bool = False):
    """Decorator for a transform module's `apply`; the registry key is the module's file name."""

    def deco(fn: ApplyFn) -> ApplyFn:
        name = fn.__module__.rsplit(".", 1)[-1]
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise RuntimeError(f"transform '{name}' registered twice")
        _REGISTRY[name] = TransformSpec(name, stage, config, fn, shape_prop, len(_REGISTRY))
        return fn

    return deco


def registry() -> dict[str, TransformSpec]:
    """All transforms by name; imports every module of autodeploy.transforms once."""
    global _LOADED
    if not _LOADED:
        import autodeploy.transforms as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name not in ("pipeline",) and not mod.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _LOADED = True
    return _REGISTRY


def ordered_specs() -> list[TransformSpec]:
    return sorted(registry().values(), key=lambda s: (s.stage, s.order))


def cleanup(gm: fx.GraphModule, *, recompile: bool = True) -> None:
    """Dead-code elimination, lint and recompile: the shared epilogue of every transform.

    run_pipeline passes recompile=False and recompiles once at its end: transforms read the graph
    (FX passes, Interpreter-based shape propagation and calibration), never the generated code, and
    regenerating the 1.3k-node 1B forward takes 50-100 ms each time (7 transforms rewrite a Llama)."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    if recompile:
        gm.recompile()


def graph_state(gm: fx.GraphModule) -> list[tuple]:
    """What cleanup's result depends on: every node with its op, name, target and arguments, in order.

    Equal states mean cleanup has nothing to do: no new dead code, the same generated code. Most
    transforms find nothing to rewrite in a given model (9 of 16 for a Llama); a cleanup of the
    1.3k-node 1B graph cost each of them 22-30 ms on CPU (with its recompile). Arguments are held by
    reference (fx never mutates an args tuple in place; assigning new args replaces it), so a stored
    state stays valid."""
    return [(n, n.op, n.name, n.target, n.args, n.kwargs) for n in gm.graph.nodes]


def _same_state(now: list[tuple], before: list[tuple] | None) -> bool:
    if before is None:
        return False
    try:
        return now == before  # unchanged arguments are the same objects: compared by identity
    except Exception:  # a literal whose == is not a bool (a tensor): assume changed
        return False


def propagate_shapes(gm: fx.GraphModule) -> None:
    """Refresh node.meta['val'] by running the graph on fake tensors built from the placeholders' vals."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    fake_mode = next((v.fake_mode for v in vals if isinstance(v, torch.Tensor) and hasattr(v, "fake_mode")), None)
    if fake_mode is None:
        fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    # no_grad: an inference graph may modify a multi-output view in place (Gemma3n's per-layer
    # inputs), which autograd's view tracking refuses only when grad mode is on
    # python dispatcher: composite ops (aten.linear) decompose SymInt-aware, as under export; torch
    # 2.11's C++ linear called numel() on a symbolic input in the 2-rank run on the H100 machine
    from torch._dispatch.python import enable_python_dispatcher

    with fake_mode, torch.no_grad(), enable_python_dispatcher():
        _fake_attr_prop(gm, fake_mode).propagate_dont_convert_inputs(*vals)


def _fake_attr_prop(gm: fx.GraphModule, mode):
    """FakeTensorProp whose get_attr hands out fake copies of parameters and buffers.

    Plain FakeTensorProp passes the module's own tensors (meta after export, sliced meta after
    sharding) into ops next to symbolic fake activations, leaving their conversion to each op; fake
    copies from the same mode are what export itself traced with. (The torch 2.11 failure of the
    2-rank run was fixed by the python dispatcher in propagate_shapes; this alone did not fix it.)
    """
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    class Prop(FakeTensorProp):
        def get_attr(self, target, args, kwargs):
            value = super().get_attr(target, args, kwargs)
            if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
                value = mode.from_tensor(value, static_shapes=True)
            return value

    return Prop(gm, mode=mode)


def dump_graph(gm: fx.GraphModule, directory: Path, index: int, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{index:02d}_{name}.txt"
    path.write_text(gm.print_readable(print_output=False, include_stride=False, include_device=False))
    return path


def run_pipeline(
    gm: fx.GraphModule,
    ctx: TransformContext,
    *,
    dump_dir: str | Path | None = None,
    only: list[str] | None = None,
) -> list[TransformInfo]:
    """Run every enabled transform in stage order; returns one TransformInfo per registered transform."""
    history = gm.meta.setdefault("autodeploy_history", [])
    dump = Path(dump_dir) if dump_dir else None
    if dump is not None:
        dump_graph(gm, dump, 0, "exported")
    infos: list[TransformInfo] = []
    cleaned = None  # graph_state after the last cleanup (None: the graph as exported was never cleaned)
    for i, spec in enumerate(ordered_specs(), start=1):
        cfg = ctx.recipe.transform_config(spec.name)
        if not cfg.enabled or (only is not None and spec.name not in only):
            info = TransformInfo(name=spec.name, stage=spec.stage.name.lower(), skipped=True)
            infos.append(info)
            history.append(info.as_dict())
            continue
        t0 = time.perf_counter()
        with progress.step(f"Transform {spec.name}"):
            info = spec.apply(gm, ctx, cfg)
            if not _same_state(graph_state(gm), cleaned):
                cleanup(gm, recompile=False)
                cleaned = graph_state(gm)
            if spec.shape_prop and info.changed:
                propagate_shapes(gm)
        info.name, info.stage = spec.name, spec.stage.name.lower()
        info.seconds = time.perf_counter() - t0
        if info.warning:
            progress.warn(f"{spec.name}: {info.warning}")
        infos.append(info)
        history.append(info.as_dict())
        if dump is not None:
            dump_graph(gm, dump, i, spec.name)
    if cleaned is not None:  # the code of the final graph (cleanup deferred it)
        gm.recompile()
    return infos


def report_table(infos: list[TransformInfo]):
    """A rich Table of the per-transform infos, printed by `autodeploy optimize`."""
    from rich.table import Table

    table = Table(title="Transforms")
    for col in ("transform", "stage", "matches", "changed", "time (s)", "note"):
        table.add_column(col, justify="right" if col in ("matches", "time (s)") else "left")
    for info in infos:
        note = "skipped" if info.skipped else (info.warning or "")
        table.add_row(
            info.name,
            info.stage,
            "-" if info.skipped else str(info.matches),
            "-" if info.skipped else ("yes" if info.changed else "no"),
            "-" if info.skipped else f"{info.seconds:.3f}",
            note,
        )
    return table
