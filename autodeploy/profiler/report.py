"""Printing a bench result: the summary table, the regression table, and the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autodeploy.errors import AutoDeployError
from autodeploy.profiler.compare import Change


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def summary_table(result: dict[str, Any]):
    from rich.table import Table

    roof = result.get("roofline") or {}
    title = (f"{result.get('source')} · {result.get('recipe')} · {result.get('device')} · "
             f"optimize {_f(result.get('optimize_s'))} s · copy {_f(roof.get('bandwidth_gb_s'), '{:.0f}')} GB/s")
    table = Table(title=title)
    modes = sorted({m for w in result.get("workloads", []) for m in (w.get("baselines") or {})})
    cols = ["workload", "TTFT ms", "TPOT ms", "tok/s/seq", "tok/s", "% roofline", "peak GB"]
    cols += [f"{m} tok/s (x)" for m in modes]
    for c in cols:
        table.add_column(c, justify="left" if c == "workload" else "right")
    for w in result.get("workloads", []):
        if w.get("error"):
            table.add_row(w.get("name", "?"), f"[red]failed: {w['error']}[/red]", *[""] * (len(cols) - 2))
            continue
        row = [w["name"], _f(w.get("ttft_ms")), _f(w.get("tpot_ms"), "{:.2f}"), _f(w.get("tokens_per_s_per_seq")),
               _f(w.get("tokens_per_s")), _f(w.get("pct_roofline")), _f(w.get("peak_memory_gb"), "{:.2f}")]
        for m in modes:
            b = (w.get("baselines") or {}).get(m)
            if not b:
                row.append("-")
            elif b.get("error"):
                row.append("[red]failed[/red]")
            else:
                row.append(f"{_f(b.get('tokens_per_s'))} ({_f(b.get('speedup'), '{:.2f}')}x)")
        table.add_row(*row)
    return table


def regression_table(changes: list[Change], threshold: float):
    from rich.table import Table

    table = Table(title=f"Regressions beyond {threshold:g}%")
    for c in ("workload", "metric", "baseline", "current", "change %"):
        table.add_column(c, justify="left" if c in ("workload", "metric") else "right")
    for c in changes:
        table.add_row(c.workload, c.metric, f"{c.baseline:.4g}", f"{c.current:.4g}", f"{c.pct:+.1f}")
    return table


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bars of output tokens/s per workload: autodeploy, each baseline, and the roofline as a marker."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AutoDeployError("--plot needs matplotlib (pip install 'autodeploy[bench]')") from None
    workloads = [w for w in result.get("workloads", []) if not w.get("error") and w.get("tokens_per_s")]
    modes = sorted({m for w in workloads for m in (w.get("baselines") or {})})
    series = ["autodeploy"] + modes
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(workloads) + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        vals = []
        for w in workloads:
            src = w if name == "autodeploy" else (w.get("baselines") or {}).get(name) or {}
            vals.append(src.get("tokens_per_s") or 0.0)
        ax.bar([j + i * width for j in range(len(workloads))], vals, width, label=name)
    for j, w in enumerate(workloads):
        if w.get("roofline_tokens_per_s"):
            ax.hlines(w["roofline_tokens_per_s"], j - width / 2, j + width * (len(series) - 0.5), colors="k",
                      linestyles="dashed", label="roofline (decode)" if j == 0 else None)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(workloads))])
    ax.set_xticklabels([w["name"] for w in workloads], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{result.get('source')} on {result.get('device')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
