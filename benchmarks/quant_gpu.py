"""Quantized decode on the GPU: batch-1 tok/s and memory for bf16, FP8 and INT4 weight-only, one run.

    python3 benchmarks/quant_gpu.py                         # random:llama-3.1-8b, bf16 fp8 int4
    python3 benchmarks/quant_gpu.py --variants int4,int4_lm_head --budget-s 300 --json out/quant.json

Each variant runs in its own child process (a clean allocator, its own timeout): build the runtime
through the h100 recipe (export, quantize on load, autotune, CUDA graphs), then one warm batch-1
workload (random prompt of --input-len tokens, --output-len new tokens). Reported per variant:
decode tok/s (1 / mean TPOT), the speedup over bf16 in the same run, weights resident after the
load, the allocator's peak during the load (quantize-on-load keeps it near the bf16 weights, never
bf16 + quantized), and the peak during decode. A variant that fails or times out is reported as
such; the others still run. The table prints last; --json keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "bf16": [],
    "fp8": ["transforms.quantize_fp8.enabled=true"],
    # the add + RMSNorm not folded into the FP8 qkv / gate_up (norm, quantization and GEMV: 3 launches a site)
    "fp8_nofold": ["transforms.quantize_fp8.enabled=true", "transforms.fuse_norm_into_gemv.fp8=false"],
    # the gated activation not folded into the FP8 down_proj (act, quantization and GEMV: 3 launches a layer)
    "fp8_noactfold": ["transforms.quantize_fp8.enabled=true", "transforms.fuse_act_into_fp8_gemv.enabled=false"],
    # lm_head in FP8 too (the GEMV bench: 3.57 -> 3.36 ms of the 8B step's GEMMs)
    "fp8_lm_head": ["transforms.quantize_fp8.enabled=true", "transforms.quantize_fp8.exclude=[]"],
    "fp8_lm_head_noactfold": ["transforms.quantize_fp8.enabled=true", "transforms.quantize_fp8.exclude=[]",
                              "transforms.fuse_act_into_fp8_gemv.enabled=false"],
    # the gated activation folded into the FP8 down_proj (recipes have it off until timed)
    "fp8_lm_head_actfold": ["transforms.quantize_fp8.enabled=true", "transforms.quantize_fp8.exclude=[]",
                            "transforms.fuse_act_into_fp8_gemv.enabled=true"],
    "int4": ["transforms.quantize_int4_weight_only.enabled=true", "transforms.quantize_int4_weight_only.group_size=128"],
    # the K-major layout for the decode GEMV (transforms/repack_int4_kmajor.py; recipes/h100-int4.yaml has it on)
    "int4_kmajor": ["transforms.quantize_int4_weight_only.enabled=true", "transforms.quantize_int4_weight_only.group_size=128",
                    "transforms.repack_int4_kmajor.enabled=true"],
    # lm_head (1 GB of bf16 on the 8B shape) quantized too: a quarter of the bytes per step
    "int4_kmajor_lm_head": ["transforms.quantize_int4_weight_only.enabled=true",
                            "transforms.quantize_int4_weight_only.group_size=128",
                            "transforms.quantize_int4_weight_only.exclude=[]", "transforms.repack_int4_kmajor.enabled=true"],
    "int4_lm_head": ["transforms.quantize_int4_weight_only.enabled=true",
                     "transforms.quantize_int4_weight_only.group_size=128",
                     "transforms.quantize_int4_weight_only.exclude=[]"],
    "int8": ["transforms.quantize_int8_weight_only.enabled=true"],
}
GB = 1e9


def child(args) -> dict:
    """One variant, in this process: build, measure, return a dict."""
    import torch

    from autodeploy.profiler.bench import build_runtime
    from autodeploy.profiler.harness import fixed_workload

    cuda = torch.cuda.is_available()  # a CPU run (recipe cpu, tiny model) only checks the script itself
    device = torch.device("cuda" if cuda else "cpu")
    overrides = VARIANTS[args.one] + [f"runtime.max_seq_len={args.input_len + args.output_len + 64}",
                                      "runtime.max_batch_size=1", "runtime.cuda_graph_batch_sizes=[1]",
                                      "runtime.kv_memory_gb=1"] + list(args.set or [])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    rt = build_runtime(args.model, args.recipe, overrides)
    if cuda:
        torch.cuda.synchronize(device)
    out = {"variant": args.one, "overrides": overrides, "build_s": time.perf_counter() - t0,
           "load_peak_gb": torch.cuda.max_memory_allocated(device) / GB if cuda else 0.0,
           "resident_gb": torch.cuda.memory_allocated(device) / GB if cuda else 0.0,
           "weights_gb": sum(p.numel() * p.element_size() for p in rt.graph_module.parameters()) / GB,
           "device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__}
    quantize = [i for i in rt.report if i.name.startswith("quantize_") and not i.skipped]
    out["quantized_layers"] = sum(i.matches for i in quantize)
    # what a transform warned of (insert_kv_cache not finding the lm_head, a pattern not matching): the progress
    # log prints these without "WARNING", so the stderr filter of run_variant never saw them
    out["transform_warnings"] = {i.name: i.warning for i in rt.report if i.warning}
    sel = next((i.details for i in rt.report if i.name == "select_backends" and not i.skipped), {}) or {}
    out["backend_choices"] = {op: sorted(set(c.values())) for op, c in (sel.get("choices") or {}).items()
                              if "linear" in op}
    out["choices_per_bucket"] = sel.get("choices") or {}
    model = rt.model  # captured CUDA-graph buckets: none means every decode step runs op by op
    out["cuda_graph_buckets"] = sorted(getattr(model, "graphs", {}) or {})
    out["capture_breakdown"] = getattr(model, "capture_breakdown", {})
    vocab = rt.hf_config.get_text_config().vocab_size
    w = fixed_workload(rt, 1, args.input_len, args.output_len, vocab, seed=0, warmup=True)
    out.update(tpot_ms=w.get("tpot_ms"), decode_tok_s=w.get("tokens_per_s_per_seq"), ttft_ms=w.get("ttft_ms"),
               decode_peak_gb=w.get("peak_memory_gb"))
    return out


def run_variant(name: str, args, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "out.json"
        cmd = [sys.executable, __file__, "--one", name, "--child-json", str(path), "--model", args.model,
               "--recipe", args.recipe, "--input-len", str(args.input_len), "--output-len", str(args.output_len)]
        for s in args.set or []:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            tail = (e.stderr or b"")[-800:]
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            return {"variant": name, "error": f"timeout after {timeout:.0f} s", "log_tail": tail}
        if proc.returncode != 0 or not path.exists():
            return {"variant": name, "error": f"exit {proc.returncode}", "log_tail": (proc.stderr or "")[-1500:]}
        res = json.loads(path.read_text())
        res["wall_s"] = time.perf_counter() - t0
        res["warnings"] = [ln for ln in (proc.stderr or "").splitlines() if "WARNING" in ln or "Error" in ln][-30:]
        return res


def table(results: list[dict]) -> str:
    base = next((r.get("decode_tok_s") for r in results if r["variant"] == "bf16" and r.get("decode_tok_s")), None)
    lines = [f"{'variant':<14}{'tok/s':>9}{'x bf16':>8}{'TPOT ms':>9}{'weights GB':>12}{'load peak GB':>14}"
             f"{'decode peak GB':>16}{'layers':>8}  backends / error"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['variant']:<14}{'-':>9}{'-':>8}{'-':>9}{'-':>12}{'-':>14}{'-':>16}{'-':>8}  {r['error']}")
            continue
        tok = r.get("decode_tok_s") or 0.0
        speed = f"{tok / base:.2f}" if base and tok else "-"
        backends = "; ".join(f"{op}: {'/'.join(v)}" for op, v in r.get("backend_choices", {}).items())
        lines.append(f"{r['variant']:<14}{tok:>9.1f}{speed:>8}{r.get('tpot_ms') or 0:>9.2f}{r['weights_gb']:>12.2f}"
                     f"{r['load_peak_gb']:>14.2f}{r.get('decode_peak_gb') or 0:>16.2f}{r['quantized_layers']:>8}  {backends}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:llama-3.1-8b")
    p.add_argument("--recipe", default="h100")
    p.add_argument("--variants", default="bf16,fp8,int4", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=560.0, help="wall budget for all variants")
    p.add_argument("--timeout-s", type=float, default=240.0, help="most seconds one variant may take")
    p.add_argument("--set", action="append", help="extra recipe override for every variant (repeatable)")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.child_json.write_text(json.dumps(child(args), default=str))
        return 0

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    start, results = time.perf_counter(), []
    for i, name in enumerate(names):
        left = args.budget_s - (time.perf_counter() - start)
        share = left / (len(names) - i)  # what is left, split over the variants still to run
        timeout = min(args.timeout_s, max(share, 30.0) if i < len(names) - 1 else left)
        if left < 30:
            results.append({"variant": name, "error": "skipped: out of budget"})
            continue
        print(f"=== {name} (timeout {timeout:.0f} s)", flush=True)
        res = run_variant(name, args, timeout)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "log_tail"}, default=str), flush=True)
        if "log_tail" in res:
            print(res["log_tail"], flush=True)
    print()
    print(table(results), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
