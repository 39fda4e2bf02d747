"""`autodeploy optimize`: export, transform and load; print the report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autodeploy.cli import common


def optimize_cmd(
    source: str = common.SOURCE,
    recipe: str = common.RECIPE,
    set_: Optional[list[str]] = common.SET,
    dump_graphs: Optional[Path] = common.DUMP,
    world_size: Optional[int] = common.WORLD_SIZE,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
    quant_budget: Optional[float] = typer.Option(
        None, "--quant-budget", min=0.0,
        help="Keep the layers most sensitive to quantization in higher precision so the output error (logits "
             "noise-to-signal power, 0.01 = 20 dB) stays within this; with a quantize_* transform enabled.",
    ),
) -> None:
    """Export the model, run the recipe's transforms, load the weights, and print the transform report."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from autodeploy.api import optimize
    from autodeploy.transforms.pipeline import report_table

    if common.spawned_ranks(world_size):
        return
    common.enable_progress()
    overrides = common.rank_overrides(set_, world_size)
    if quant_budget is not None:  # the recipe setting transforms.plan_quantization.budget
        overrides += ["transforms.plan_quantization.enabled=true", f"transforms.plan_quantization.budget={quant_budget}"]
    rt = optimize(source, recipe, overrides=overrides, dump_graphs=dump_graphs)
    if common.followed(rt):
        return
    out = common.out_console()
    table = report_table(rt.report)
    # transform and stage names stay whole on a narrow terminal; the other columns give way
    for col, items in zip(table.columns[:2], ([i.name for i in rt.report], [i.stage for i in rt.report])):
        col.no_wrap, col.min_width = True, max(map(len, items), default=None)
    out.print(table)
    summary = Table(title="Optimized", show_header=False)
    summary.add_row("model", f"{rt.source.spec} ({rt.arch.architecture})")
    summary.add_row("recipe", f"{rt.recipe.name}: {rt.recipe.runtime.device}, {rt.recipe.runtime.dtype}")
    summary.add_row("graph nodes", str(len(rt.graph_module.graph.nodes)))
    for k, v in rt.timings.items():
        summary.add_row(k, f"{v:.2f}")
    out.print(summary)
    plan = rt.graph_module.meta.get("quantization_plan")
    if plan and "layers" in plan:  # --quant-budget: the per-layer plan and where it was saved
        from autodeploy.quantization.sensitivity import plan_table

        out.print(plan_table(plan))
        out.print(f"quantization plan saved to {plan.get('path')}", highlight=False, soft_wrap=True)  # a path stays whole
    for w in rt.arch.warnings if rt.arch is not None else []:
        out.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    if dump_graphs:
        out.print(f"graphs written to {dump_graphs}", highlight=False)
    if json_out:
        json_out.write_text(json.dumps({"transforms": [i.as_dict() for i in rt.report], "timings": rt.timings}, indent=2))
