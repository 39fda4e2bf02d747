"""Launch-config sweep of the Triton decode linear (autodeploy::triton_linear) against cuBLAS.

    PYTHONPATH=$PWD python3 benchmarks/triton_linear_sweep.py [--rows 1 16] [--models 1b 8b] [--tp 1 2]
                                                              [--kinds dot_t] [--json out.json]

Per (weight, rows): every config of CONFIGS (each with the K splits of SPLITS that leave >= 2 BK
steps a split; a split merges in the launch), the launch_config default, and
torch.nn.functional.linear (cuBLAS). --tp 2 times a rank's shard of tensor parallelism instead
(qkv, gate_up and lm_head rows halved, o and down columns halved). Each is
captured as 20 calls in one CUDA graph and the replays timed with triton.testing.do_bench
(median): that is how a decode step runs them. The 20 calls rotate over enough copies of the
weight that none is still in L2 when it comes round again (a step reads each weight once from
HBM). GB/s counts weight + x + output bytes once. Every config's output is first checked against
an fp32 reference (relative error < 1e-2); any mismatch makes the script exit 1 after the table.

The summary ends with the decode step's weight GEMMs (layers x (qkv, o, gate_up, down) + lm_head)
with cuBLAS alone and with the faster of cuBLAS and the default config per weight.

One run on an H100 80GB HBM3 (132 SMs, torch 2.11, triton 3.6; us per call, GB/s of weight bytes), with
the launch_config defaults set from it (that run's own "default" column was an earlier heuristic):

    weight       MB    M  cuBLAS          triton default  ratio   weight       MB     M  cuBLAS          triton default  ratio
    1b qkv       12.6  1    7.9 (1586)      8.1 (1555)    1.02    8b qkv       50.3   1   21.1 (2389)     19.9 (2524)    0.95
    1b o          8.4  1    7.0 (1203)      7.2 (1159)    1.04    8b o         33.6   1   16.8 (1998)     14.9 (2254)    0.89
    1b gate_up   67.1  1   25.8 (2596)     25.3 (2656)    0.98    8b gate_up  234.9   1   82.1 (2860)     80.6 (2915)    0.98
    1b down      33.6  1   16.6 (2018)     16.7 (2014)    1.00    8b down     117.4   1   44.7 (2627)     43.7 (2686)    0.98
    1b lm_head  525.3  1  188.7 (2785)    170.4 (3082)    0.90    8b lm_head 1050.7   1  376.3 (2792)    339.7 (3093)    0.90
    (M = 16: within 4% of the M = 1 times, both backends; 8B at M = 16 keeps the same ratios.)
    step weight GEMMs, faster of the two per weight: 1B 1.107 -> 1.079 ms (-2.5%), 8B 5.647 -> 5.432 ms (-3.8%)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VOCAB = 128256
MODELS = {  # name: hidden, q heads, kv heads, head dim, ffn, layers (Llama-3.2-1B, Llama-3.1-8B)
    "1b": (2048, 32, 8, 64, 8192, 16),
    "8b": (4096, 32, 8, 128, 14336, 32),
}
# (kind, BN, BK, num_warps, num_stages); fma only for few rows (its product is [M, BN, BK] in registers)
CONFIGS = [
    ("fma", 8, 512, 4, 1), ("fma", 16, 512, 4, 1), ("fma", 32, 256, 4, 1), ("fma", 64, 128, 4, 1),
    ("fma", 32, 512, 8, 1),
    ("dot", 16, 256, 4, 4), ("dot", 32, 256, 4, 3), ("dot", 64, 128, 4, 4),
    ("dot_t", 16, 256, 4, 4), ("dot_t", 16, 512, 4, 3), ("dot_t", 32, 128, 4, 5), ("dot_t", 32, 256, 4, 3),
    ("dot_t", 64, 128, 4, 4), ("dot_t", 64, 256, 4, 3), ("dot_t", 64, 256, 4, 4), ("dot_t", 128, 128, 8, 3),
]
SPLITS = (1, 2, 3, 4, 6, 8)
CALLS = 20


def weights_of(model: str, tp: int = 1) -> list[tuple[str, int, int]]:
    """(label, N, K) of one rank's decode GEMMs under tensor parallelism tp (column-split qkv, gate_up and
    lm_head, row-split o and down)."""
    h, n, n_kv, d, f, _ = MODELS[model]
    name = model if tp == 1 else f"{model}/tp{tp}"
    return [(f"{name} qkv", (n + 2 * n_kv) * d // tp, h), (f"{name} o", h, n * d // tp),
            (f"{name} gate_up", 2 * f // tp, h), (f"{name} down", h, f // tp), (f"{name} lm_head", VOCAB // tp, h)]


def linear_kinds() -> tuple[str, ...]:
    return tuple(dict.fromkeys(c[0] for c in CONFIGS))


def graph_us(call, copies: int, warmup: int = 5, rep: int = 30) -> float:
    """Median microseconds per call of CALLS calls (call(i) uses weight copy i % copies) in one CUDA
    graph (shared by gated_linear_bench.py and quant_gemv_bench.py)."""
    import triton.testing

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(CALLS, copies)):
            call(i % copies)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            call(i % copies)
    ms = triton.testing.do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")
    del graph
    return ms * 1e3 / CALLS


def splits_for(n: int, k: int, bn: int, bk: int, sms: int) -> list[int]:
    """The splits of SPLITS worth timing: >= 2 BK steps a split, and none for weights with >= 2 tiles per SM."""
    if -(-n // bn) >= 2 * sms:
        return [1]
    return [s for s in SPLITS if s == 1 or k // s >= 2 * bk]


def sweep_case(label, m, n, k, sms, l2_bytes, linear, results, mismatches, kinds):
    w_bytes = n * k * 2
    copies = min(CALLS, math.ceil(2 * l2_bytes / w_bytes) + 1)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ws = [(torch.randn(n, k, device="cuda", generator=gen) * k**-0.5).to(torch.bfloat16) for _ in range(copies)]
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    ref = F.linear(x.float(), ws[0].float())  # [m, n] fp32
    nbytes = w_bytes + 2 * m * k + 2 * m * n

    def record(name, cfg, us, err=None, rel=None):
        gbs = nbytes / us / 1e3 if us else None
        results.append(dict(case=label, m=m, n=n, k=k, name=name, config=cfg, us=us, gbs=gbs, rel_err=rel, error=err))
        return us

    cublas = record("cublas", None, graph_us(lambda i: F.linear(x, ws[i]), copies))
    default = linear.launch_config(m, n, k, sms)
    configs = [("default", dict(default))]
    for kind, bn, bk, warps, stages in CONFIGS:
        if kind not in kinds or (kind == "fma" and m > 2):
            continue
        for split in splits_for(n, k, bn, bk, sms):
            cfg = dict(kind=kind, bn=bn, bk=bk, split=split, num_warps=warps, num_stages=stages)
            configs.append((f"{kind} bn={bn} bk={bk} w={warps} st={stages} split={split}", cfg))
    timed = []
    for name, cfg in configs:
        try:
            out = linear.launch(x, ws[0], None, cfg)
            torch.cuda.synchronize()
            rel = ((out.float() - ref).norm() / ref.norm()).item()
            if not math.isfinite(rel) or rel >= 1e-2:
                mismatches.append(f"{label} M={m} {name}: relative error {rel:.2e}")
                record(name, cfg, None, "mismatch", rel)
                continue
            us = record(name, cfg, graph_us(lambda i, cfg=cfg: linear.launch(x, ws[i], None, cfg), copies), rel=rel)
            timed.append((us, name))
            print(f"    {us:7.1f} us {nbytes / us / 1e3:6.0f} GB/s  {name}", flush=True)
        except Exception as e:  # a config the compiler rejects (registers, shared memory)
            record(name, cfg, None, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            print(f"    {name}: {type(e).__name__}", flush=True)
    timed.sort()
    d_us = next((u for u, nm in timed if nm == "default"), float("nan"))
    gb = lambda us: nbytes / us / 1e3  # noqa: E731
    print(f"{label:12s} M={m:2d} ({w_bytes / 1e6:7.1f} MB, {copies:2d} copies)  cuBLAS {cublas:7.1f} us {gb(cublas):6.0f} GB/s"
          f" | default {d_us:7.1f} us {gb(d_us):6.0f} GB/s | best {timed[0][0]:7.1f} us {gb(timed[0][0]):6.0f} GB/s"
          f" {timed[0][1]}", flush=True)
    del ws, x, ref
    torch.cuda.empty_cache()
    return dict(case=label, m=m, cublas=cublas, default=d_us, best=timed[0][0], best_name=timed[0][1],
                mb=w_bytes / 1e6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--models", nargs="+", default=["1b", "8b"], choices=list(MODELS))
    ap.add_argument("--tp", type=int, nargs="+", default=[1], help="time one rank's shards at these TP degrees")
    ap.add_argument("--kinds", nargs="+", default=list(linear_kinds()), choices=list(linear_kinds()))
    ap.add_argument("--json", type=Path, default=None, help="write every timing here (rewritten after each case)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    from autodeploy.backends.triton import linear

    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, getattr(props, "L2_cache_size", 50 << 20)
    card = torch.cuda.get_device_name(0)
    import triton

    print(f"{card}: {sms} SMs, L2 {l2 >> 20} MB | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    results, mismatches, summary = [], [], []
    for model in args.models:
        for tp in args.tp:
            for m in args.rows:
                for label, n, k in weights_of(model, tp):
                    summary.append(sweep_case(label, m, n, k, sms, l2, linear, results, mismatches, args.kinds))
                if args.json:
                    args.json.write_text(json.dumps(dict(card=card, results=results, summary=summary), indent=1))

    print(f"\n{card}, bf16, CUDA-graph replays (median us per call)")
    print(f"| weight | MB | M | cuBLAS us (GB/s) | default us (GB/s) | best us (GB/s) | best / cuBLAS | best config |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        gbs = lambda us: s["mb"] * 1e3 / us  # noqa: E731  (x and output bytes left out here)
        print(f"| {s['case']} | {s['mb']:.1f} | {s['m']} | {s['cublas']:.1f} ({gbs(s['cublas']):.0f}) | "
              f"{s['default']:.1f} ({gbs(s['default']):.0f}) | {s['best']:.1f} ({gbs(s['best']):.0f}) | "
              f"{s['best'] / s['cublas']:.2f} | {s['best_name']} |")
    for model in [f"{m}" if tp == 1 else f"{m}/tp{tp}" for m in args.models for tp in args.tp]:
        layers = MODELS[model.split("/")[0]][5]
        for m in args.rows:
            rows = {s["case"].split()[1]: s for s in summary if s["case"].split()[0] == model and s["m"] == m}
            if len(rows) < 5:
                continue
            scale = {name: (1 if name == "lm_head" else layers) for name in rows}
            cub = sum(scale[nm] * s["cublas"] for nm, s in rows.items())
            mix = sum(scale[nm] * min(s["cublas"], s["default"]) for nm, s in rows.items())
            print(f"{model} M={m}: step weight GEMMs cuBLAS {cub / 1e3:.3f} ms, min(cuBLAS, default) {mix / 1e3:.3f} ms")
    if mismatches:
        print("NUMERIC MISMATCH:\n  " + "\n  ".join(mismatches))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
