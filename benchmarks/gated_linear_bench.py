"""Decode GEMVs of Llama-3.2-1B / Llama-3.1-8B on the GPU: cuBLAS vs the Triton kernels, a small sweep.

    PYTHONPATH=$PWD python3 benchmarks/gated_linear_bench.py [--rows 1 16] [--models 1b 8b] [--json out.json]

Per (weight, rows), bf16:
  gate_up [2I, K]   cuBLAS GEMM alone, cuBLAS + the Triton activation (what the unfused graph runs:
                    aten.linear, then autodeploy::triton_fused_gated_mlp_act on its [M, 2I] output),
                    and autodeploy::triton_gated_linear (GEMV + act in one launch) at its default
                    config and a few others
  qkv, o, down, lm_head   cuBLAS vs autodeploy::triton_linear, default and a few configs
Each variant is captured as 20 calls in one CUDA graph whose weights rotate over enough copies that
none is still in L2 when it comes round (benchmarks/triton_linear_sweep.py's graph_us), replays
timed with triton.testing.do_bench (median). GB/s counts weight bytes only. Every Triton output is
first checked against an fp32 reference (relative error < 1e-2): a mismatch makes the script exit 1.
The sweep is kept small (~1 minute on an H100, mostly compiles).

The summary table ends with the decode step's weight GEMMs (layers x (qkv, o, gate_up(+act), down)
+ lm_head): cuBLAS (+ act) vs the best of cuBLAS and Triton defaults per weight.

Then, for qkv and gate_up (unless --no-norm), the residual add + RMSNorm before them: the Triton norm
kernel followed by cuBLAS (+ act) or by the Triton GEMV, vs the norm as the GEMV's prologue (one launch;
transforms/fuse_norm_into_gemv.py). --norm-only times just those rows, e.g. for the 1B decode step:

    PYTHONPATH=$PWD python3 benchmarks/gated_linear_bench.py --norm-only --models 1b --rows 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.triton_linear_sweep import CALLS, MODELS, graph_us, splits_for, weights_of  # noqa: E402

DEVICE = "cuda"  # a module variable so the script can be dry-run elsewhere (interpreted kernels on CPU)
# (kind, BN, BK, num_warps, num_stages); gated BN counts output columns: a program reads 2 x BN weight rows
LINEAR_CONFIGS = [("dot_t", 16, 256, 4, 4), ("dot_t", 32, 128, 4, 5), ("dot_t", 64, 256, 4, 3),
                  ("dot_t", 128, 128, 8, 3)]
GATED_CONFIGS = [("dot_t", 16, 256, 4, 4), ("dot_t", 16, 512, 4, 3), ("dot_t", 32, 128, 4, 5),
                 ("dot_t", 32, 256, 4, 3), ("dot_t", 32, 256, 8, 3), ("dot_t", 64, 128, 8, 3)]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def bench_case(label, m, n, k, sms, l2, results, mismatches):
    """One weight at m rows: cuBLAS baselines, then the Triton default and sweep; returns the summary row."""
    from autodeploy.backends.triton import gated_linear, gated_mlp, linear

    gated = "gate_up" in label
    w_bytes = n * k * 2
    copies = min(CALLS, math.ceil(2 * l2 / w_bytes) + 1)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    ws = [(torch.randn(n, k, device=DEVICE, generator=gen) * k**-0.5).to(torch.bfloat16) for _ in range(copies)]
    x = torch.randn(m, k, device=DEVICE, generator=gen).to(torch.bfloat16)
    y = F.linear(x.float(), ws[0].float())  # [m, n] fp32
    ref = F.silu(y[:, : n // 2]) * y[:, n // 2:] if gated else y
    row = dict(case=label, m=m, mb=w_bytes / 1e6)

    def record(name, cfg, us, err=None, rel=None):
        results.append(dict(case=label, m=m, n=n, k=k, name=name, config=cfg, us=us, rel_err=rel, error=err,
                            gbs=w_bytes / us / 1e3 if us else None))
        return us

    row["cublas"] = record("cublas", None, graph_us(lambda i: F.linear(x, ws[i]), copies))
    if gated:
        row["cublas_act"] = record("cublas+act", None, graph_us(
            lambda i: gated_mlp.launch(F.linear(x, ws[i]), None, "silu"), copies))
        run = lambda w, cfg: gated_linear.launch(x, w, None, "silu", cfg)  # noqa: E731
        default = gated_linear.launch_config(m, n // 2, k, sms)
        sweep, n_out = GATED_CONFIGS, n // 2
    else:
        run = lambda w, cfg: linear.launch(x, w, None, cfg)  # noqa: E731
        default = linear.launch_config(m, n, k, sms)
        sweep, n_out = LINEAR_CONFIGS, n
    configs = [("default", dict(default))]
    for kind, bn, bk, warps, stages in sweep:
        for split in splits_for(n_out, k, bn, bk, sms):
            configs.append((f"{kind} bn={bn} bk={bk} w={warps} st={stages} split={split}",
                            dict(kind=kind, bn=bn, bk=bk, split=split, num_warps=warps, num_stages=stages)))
    timed = []
    for name, cfg in configs:
        try:
            rel = _rel(run(ws[0], cfg), ref)
            if not math.isfinite(rel) or rel >= 1e-2:
                mismatches.append(f"{label} M={m} {name}: relative error {rel:.2e}")
                record(name, cfg, None, "mismatch", rel)
                continue
            us = record(name, cfg, graph_us(lambda i, cfg=cfg: run(ws[i], cfg), copies), rel=rel)
            timed.append((us, name))
        except Exception as e:  # a config the compiler rejects (registers, shared memory)
            record(name, cfg, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            print(f"    {label} M={m} {name}: {type(e).__name__}", flush=True)
    timed.sort()
    row["default"] = next((u for u, nm in timed if nm == "default"), float("nan"))
    row["best"], row["best_name"] = timed[0] if timed else (float("nan"), "-")
    base = row.get("cublas_act", row["cublas"])
    print(f"{label:12s} M={m:2d} {'cuBLAS+act' if gated else 'cuBLAS':10s} {base:7.1f} us | default {row['default']:7.1f}"
          f" | best {row['best']:7.1f} us ({row['best'] / base:.2f} x) {row['best_name']}", flush=True)
    del ws, x, y, ref
    torch.cuda.empty_cache()
    return row


NORM_VARIANTS = ("norm + cuBLAS", "norm + Triton GEMV", "prologue-fused")


def bench_norm_case(label, m, n, k, l2, results, mismatches):
    """Add + RMSNorm as the GEMV's prologue (autodeploy::triton_add_rmsnorm_linear for qkv,
    triton_add_rmsnorm_gated_linear for gate_up) against the two launches it replaces, each at default
    configs: the Triton add + RMSNorm kernel, then cuBLAS (+ the Triton act) or the Triton GEMV alone.
    These are the candidates select_backends times for autodeploy::add_rmsnorm_(gated_)linear."""
    from autodeploy.backends.triton import gated_linear, gated_mlp, linear, rmsnorm

    gated = "gate_up" in label
    w_bytes = n * k * 2
    copies = min(CALLS, math.ceil(2 * l2 / w_bytes) + 1)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    ws = [(torch.randn(n, k, device=DEVICE, generator=gen) * k**-0.5).to(torch.bfloat16) for _ in range(copies)]
    x, res = (torch.randn(m, k, device=DEVICE, generator=gen).to(torch.bfloat16) for _ in range(2))
    nw = (torch.rand(k, device=DEVICE, generator=gen) + 0.5).to(torch.bfloat16)
    h = (x.float() + res.float()).to(torch.bfloat16).float()
    y = F.linear(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.float(), ws[0].float())
    ref = F.silu(y[:, : n // 2]) * y[:, n // 2:] if gated else y
    row = dict(case=label + " +norm", m=m, mb=w_bytes / 1e6)
    norm = (res, nw, 1e-5, False)

    def norm_then(i, project):
        normed, _ = rmsnorm.launch(x, nw, 1e-5, False, residual=res)
        return project(normed, ws[i])

    if gated:
        variants = {
            NORM_VARIANTS[0]: lambda i: norm_then(i, lambda a, w: gated_mlp.launch(F.linear(a, w), None, "silu")),
            NORM_VARIANTS[1]: lambda i: norm_then(i, lambda a, w: gated_linear.launch(a, w, None, "silu")),
            NORM_VARIANTS[2]: lambda i: gated_linear.launch(x, ws[i], None, "silu", norm=norm)[0],
        }
    else:
        variants = {
            NORM_VARIANTS[0]: lambda i: norm_then(i, F.linear),
            NORM_VARIANTS[1]: lambda i: norm_then(i, lambda a, w: linear.launch(a, w)),
            NORM_VARIANTS[2]: lambda i: linear.launch(x, ws[i], norm=norm)[0],
        }
    for name, call in variants.items():
        try:
            rel = _rel(call(0), ref)
            if not math.isfinite(rel) or rel >= 1e-2:
                mismatches.append(f"{row['case']} M={m} {name}: relative error {rel:.2e}")
                row[name] = float("nan")
                continue
            row[name] = graph_us(call, copies)
        except Exception as e:  # noqa: BLE001
            print(f"    {row['case']} M={m} {name}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            row[name] = float("nan")
        results.append(dict(case=row["case"], m=m, n=n, k=k, name=name, us=row[name]))
    print(f"{row['case']:18s} M={m:2d} " + " | ".join(f"{nm} {row[nm]:7.1f} us" for nm in variants), flush=True)
    del ws, x, res, y, ref
    torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--models", nargs="+", default=["1b", "8b"], choices=list(MODELS))
    ap.add_argument("--json", type=Path, default=None, help="write every timing here")
    ap.add_argument("--no-norm", action="store_true", help="skip the add + RMSNorm prologue rows (qkv, gate_up)")
    ap.add_argument("--norm-only", action="store_true", help="only the add + RMSNorm prologue rows (no GEMV sweep)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    import triton

    t0 = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, getattr(props, "L2_cache_size", 50 << 20)
    card = torch.cuda.get_device_name(0)
    print(f"{card}: {sms} SMs, L2 {l2 >> 20} MB | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    results, mismatches, summary, norm_rows = [], [], [], []
    for model in args.models:
        for m in args.rows:
            for label, n, k in weights_of(model):
                if not args.norm_only:
                    summary.append(bench_case(label, m, n, k, sms, l2, results, mismatches))
                if ("gate_up" in label or "qkv" in label) and not args.no_norm:
                    norm_rows.append(bench_norm_case(label, m, n, k, l2, results, mismatches))
    if args.json:
        args.json.write_text(json.dumps(dict(card=card, results=results, summary=summary, norm=norm_rows), indent=1))

    gbs = lambda s, us: s["mb"] * 1e3 / us  # noqa: E731  (weight bytes only)
    if summary:
        print(f"\n{card}, bf16, CUDA-graph replays of {CALLS} calls, weights rotated past L2 (median us per call, GB/s)")
        print("| weight | MB | M | cuBLAS | cuBLAS + act | Triton default | Triton best | best / cuBLAS(+act) | best config |")
        print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        base = s.get("cublas_act", s["cublas"])
        act = f"{s['cublas_act']:.1f} ({gbs(s, s['cublas_act']):.0f})" if "cublas_act" in s else "-"
        print(f"| {s['case']} | {s['mb']:.1f} | {s['m']} | {s['cublas']:.1f} ({gbs(s, s['cublas']):.0f}) | {act} | "
              f"{s['default']:.1f} ({gbs(s, s['default']):.0f}) | {s['best']:.1f} ({gbs(s, s['best']):.0f}) | "
              f"{s['best'] / base:.2f} | {s['best_name']} |")
    for model in args.models:
        layers = MODELS[model][5]
        for m in args.rows:
            rows = {s["case"].split()[1]: s for s in summary if s["case"].startswith(model + " ") and s["m"] == m}
            if len(rows) < 5:
                continue
            scale = {name: (1 if name == "lm_head" else layers) for name in rows}
            base = sum(scale[nm] * s.get("cublas_act", s["cublas"]) for nm, s in rows.items())
            mix = sum(scale[nm] * min(s.get("cublas_act", s["cublas"]), s["default"]) for nm, s in rows.items())
            best = sum(scale[nm] * min(s.get("cublas_act", s["cublas"]), s["best"]) for nm, s in rows.items())
            print(f"{model} M={m}: step weight GEMMs (+ MLP act) cuBLAS {base / 1e3:.3f} ms, "
                  f"min(cuBLAS, Triton default) {mix / 1e3:.3f} ms, min(cuBLAS, Triton best) {best / 1e3:.3f} ms")
    if norm_rows:
        print("\nadd + RMSNorm before the qkv / gate_up GEMV (default configs; us per call): two launches vs the "
              "prologue (gate_up: cuBLAS + the Triton act, the Triton GEMV with its act)")
        print("| weight | M | " + " | ".join(NORM_VARIANTS) + " | fused / best unfused |")
        print("|---|---|---|---|---|---|")
        for r in norm_rows:
            unfused = min(r[NORM_VARIANTS[0]], r[NORM_VARIANTS[1]])
            print(f"| {r['case']} | {r['m']} | " + " | ".join(f"{r[v]:.1f}" for v in NORM_VARIANTS)
                  + f" | {r[NORM_VARIANTS[2]] / unfused:.2f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if mismatches:
        print("NUMERIC MISMATCH:\n  " + "\n  ".join(mismatches))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
