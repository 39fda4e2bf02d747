"""The K-major INT4 GEMV on the 8B weights, a few launches each, for Nsight Compute to read counters from.

    ncu --clock-control none -k regex:int4_kmajor --section SpeedOfLight --section WarpStateStats \\
        python3 benchmarks/int4_gemv_ncu.py --calls 2          # stage ncu_int4 of gpu_stages.sh

Each weight is quantized (g = 128, random values) and repacked once, then its default launch
(int4_kmajor_gemv.launch: the bf16x2 kernel for bf16 x) runs --calls times; ncu replays each launch with
the caches flushed, so every one reads its weight from HBM. Without ncu it prints each launch's time
(CUDA events, not a benchmark: quant_gemv_bench.py times the GEMVs).
"""

from __future__ import annotations

import argparse

import torch

WEIGHTS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
           "lm_head": (128256, 4096)}  # Llama-3.1-8B: [N, K]
GROUP = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS))
    ap.add_argument("--calls", type=int, default=2, help="launches per weight")
    ap.add_argument("--rows", type=int, default=1)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    from autodeploy.backends.triton import int4_kmajor_gemm
    from autodeploy.quantization import int4, int4_kmajor

    torch.manual_seed(0)
    for name in args.weights:
        n, k = WEIGHTS[name]
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        p = int4.quantize(w, GROUP)
        words, s_t, z_t = int4_kmajor.from_half_split(p["qweight"], p["scales"], p["zeros"], GROUP)
        del w, p
        x = torch.randn(args.rows, k, device="cuda", dtype=torch.bfloat16)
        times = []
        for _ in range(args.calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            int4_kmajor_gemm.launch(x, words, s_t, z_t, None, GROUP, None)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        print(f"{name} [{n}, {k}] M={args.rows}: " + ", ".join(f"{t:.1f}" for t in times) + " us (the first compiles)")
        del words, s_t, z_t
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
