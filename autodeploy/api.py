"""The public surface: `optimize(source, recipe=..., **overrides) -> Runtime`.

    source ──resolve──▶ config ──build on meta──▶ nn.Module ──export──▶ GraphModule
       ──transforms (recipe)──▶ GraphModule ──load weights (once)──▶ Runtime
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from autodeploy import progress
from autodeploy.errors import RecipeError
from autodeploy.recipe import ModelConfig, Recipe, RuntimeConfig, load_recipe
from autodeploy.runtime.runtime import Runtime, build_paged_model


def _kwarg_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Plain keyword overrides: runtime and model field names, or dotted keys (`transforms.x.enabled`)."""
    out = {}
    for key, value in kwargs.items():
        if "." in key:
            out[key] = value
        elif key in RuntimeConfig.model_fields:
            out[f"runtime.{key}"] = value
        elif key in ModelConfig.model_fields:
            out[f"model.{key}"] = value
        else:
            raise RecipeError(f"optimize(): unknown setting '{key}' (not a runtime or model field of the recipe)")
    return out


def prepare(source: str, recipe: str | Path | Recipe | None = "cpu", overrides: dict[str, Any] | None = None):
    """Resolve the source and the recipe (no export yet)."""
    from autodeploy.models.source import resolve_source

    rec = load_recipe(recipe, overrides)
    with progress.step(f"Resolving {source}"):
        src = resolve_source(source, trust_remote_code=rec.model.trust_remote_code)
    return src, rec


def export_source(src, rec) -> torch.fx.GraphModule:
    from autodeploy.export import cache as export_cache
    from autodeploy.export import export_model
    from autodeploy.models.example import cache_dir
    from autodeploy.models.factory import build_meta_model

    with progress.step("Building model on the meta device"):
        model = build_meta_model(src, rec)
    with progress.step("Exporting with torch.export"):
        gm = export_model(model, max_batch_size=rec.runtime.max_batch_size, max_seq_len=rec.runtime.max_seq_len,
                          cache_root=cache_dir() if export_cache.enabled(rec.model.export_cache) else None)
    return gm


def optimize(
    source: str,
    recipe: str | Path | Recipe | None = "cpu",
    *,
    dump_graphs: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    **settings: Any,
) -> Runtime:
    """Export, transform and load `source` into a ready Runtime.

    `settings` are recipe overrides by field name (`dtype="float32"`, `max_batch_size=4`) or dotted
    key (`**{"transforms.cleanup_export.enabled": False}`); `overrides` takes the same as a dict or
    as `key=value` strings (the CLI's --set).
    """
    from autodeploy.distributed.checkpoint import rank_state
    from autodeploy.distributed.launch import setup_ranks
    from autodeploy.models.detect import detect_architecture
    from autodeploy.models.factory import load_tokenizer
    from autodeploy.models.weights import load_weights
    from autodeploy.recipe import parse_override
    from autodeploy.transforms.pipeline import TransformContext, run_pipeline

    merged: dict[str, Any] = {}
    if isinstance(overrides, list):
        merged.update(dict(parse_override(o) for o in overrides))
    elif overrides:
        merged.update(overrides)
    merged.update(_kwarg_overrides(settings))

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    src, rec = prepare(source, recipe, merged)
    setup_ranks(rec)  # runtime.world_size > 1 (or torchrun's): join the process group, the rank's device
    t_export = time.perf_counter()
    gm = export_source(src, rec)
    timings["export_s"] = time.perf_counter() - t_export

    arch = detect_architecture(src.config, gm)
    ctx = TransformContext(recipe=rec, hf_config=src.config, arch=arch, extra={"source": src})  # calibration reads it
    t_tf = time.perf_counter()
    infos = run_pipeline(gm, ctx, dump_dir=dump_graphs)
    timings["transforms_s"] = time.perf_counter() - t_tf

    t_load = time.perf_counter()
    device = torch.device(rec.runtime.device)
    with progress.step(f"Loading weights onto {device}"):
        state = rank_state(src, rec, device)  # sharded: each rank reads only its slices
        load_weights(gm, state, device)
        del state
    tokenizer = load_tokenizer(src)
    with progress.step("Allocating the KV cache"):
        # the CachedModel (paged KV pool sized by the recipe) when insert_kv_cache ran, else the uncached graph
        model = build_paged_model(gm, rec.runtime)
    timings["load_s"] = time.perf_counter() - t_load
    timings["total_s"] = time.perf_counter() - t0
    return Runtime(gm, tokenizer, rec, src, src.config, infos, arch, timings, model=model)
