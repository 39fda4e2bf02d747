"""The FP8 gated MLP's middle at decode: the plain gate_up GEMV + the activation kernel vs the gate_up GEMV with
the activation in its epilogue (backends/triton/add_rmsnorm_fp8_gated_mlp.py), M = 1, Llama-3.1-8B shapes.

    PYTHONPATH=$PWD python3 benchmarks/fp8_gated_gemv_bench.py [--act silu] [--json out.json]
    PYTHONPATH=$PWD python3 benchmarks/fp8_gated_gemv_bench.py --cpu-check   # tiny shapes, interpreted, no timings

Timed (x already e4m3 from the norm kernel, as in the graph):
    unfused       fp8_gemv.launch_quantized on gate_up [2F, K] (X_MODE 2, its default config), then
                  _gated_act_amax_kernel (h [1, F] + 14 block amaxes): 2 launches
    gated ...     the gated kernel alone at each config of CONFIGS (BN output columns, BK, stages, one
                  interleaved tile or two dots): 1 launch
    down ...      the down GEMV (X_MODE 3, default config) reading 14 block amaxes a row (the unfused path's)
                  and F / BN (the gated kernel's: 448 at BN 32): what the extra amaxes cost the next launch
Each call is checked against the unfused path first (h bit-identical: yes / no, and SQNR), then captured
CALLS times in one CUDA graph over weight copies rotated past L2 (triton_linear_sweep.graph_us); the median
replay time / CALLS is reported. The summary prints the saving a step would see (32 layers).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K, F, N = 4096, 14336, 4096  # 8B: hidden, intermediate, down's output
LAYERS = 32
# (BN output columns, BK, stages, interleave): the default first
CONFIGS = [(32, 256, 4, True), (32, 256, 3, True), (32, 512, 3, True), (32, 512, 4, True), (64, 256, 4, True),
           (64, 256, 3, True), (64, 512, 3, True), (64, 512, 4, True), (16, 256, 4, True), (32, 256, 4, False),
           (64, 256, 4, False)]
DEVICE = "cuda"


def label(bn: int, bk: int, stages: int, interleave: bool) -> str:
    return f"bn {bn} bk {bk} st {stages} {'one tile' if interleave else 'two dots'}"


def main() -> int:
    global DEVICE, K, F, N
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--act", default="silu", choices=["silu", "gelu_tanh", "gelu"])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cpu-check", action="store_true", help="tiny shapes, interpreted, no timings")
    args = ap.parse_args()
    if args.cpu_check:
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, K, F, N = "cpu", 256, 192, 128
    from autodeploy.backends.triton import add_rmsnorm_fp8_gated_mlp as fused
    from autodeploy.backends.triton import fp8_gemv
    from autodeploy.backends.triton import gated_act_fp8_linear as act_fp8
    from autodeploy.backends.triton._common import num_sms
    from autodeploy.quantization import fp8
    from autodeploy.quantization.metrics import sqnr

    if DEVICE == "cuda":
        from benchmarks.triton_linear_sweep import graph_us
        props = torch.cuda.get_device_properties(0)
        l2, card = getattr(props, "L2_cache_size", 50 << 20), props.name
    else:
        l2, card = 1 << 16, "cpu (interpreted: a check of the script)"
        graph_us = None
    dtype = torch.bfloat16
    print(f"{card} | triton {__import__('triton').__version__} | M = 1, K {K}, F {F}, N {N}, act {args.act}", flush=True)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    p = fp8.quantize(torch.randn(2 * F, K, device=DEVICE, generator=gen) * 2.0 * K**-0.5)
    w, s = p["weight"], p["weight_scale"]  # [2F, K] e4m3, [2F]
    d = fp8.quantize(torch.randn(N, F, device=DEVICE, generator=gen) * F**-0.5)
    wd, sd = d["weight"], d["weight_scale"]
    copies = min(20, math.ceil(2 * l2 / (2 * F * K)) + 1)
    ws = [w] + [w.clone() for _ in range(copies - 1)]
    x = torch.randn(1, K, device=DEVICE, generator=gen)
    x[:, 7] *= 25.0
    xq, xs = fp8_gemv.quantize_rows(x.to(dtype))  # [1, K] e4m3, [1]: as the norm kernel writes them
    plain_cfg = fp8_gemv.launch_config(1, 2 * F, K, num_sms(x.device))

    def unfused(i):
        gu = fp8_gemv.launch_quantized(xq, xs, ws[i], s, None, dtype, plain_cfg)  # [1, 2F]
        return act_fp8.gated_act_block_amax(gu[:, :F], gu[:, F:], args.act)  # [1, F], [1, 14]

    want_h, want_amax = unfused(0)
    time = (lambda call, n: graph_us(call, n)) if graph_us else (lambda call, n: (call(0), 1.0)[1])
    results = [dict(name="unfused (GEMV mode 2 + act kernel)", config=plain_cfg, us=time(unfused, copies))]
    print(f"  {results[0]['name']:44s} {results[0]['us']:8.2f} us   (GEMV config {plain_cfg})", flush=True)
    bad = []
    for bn, bk, stages, interleave in CONFIGS:
        cfg = dict(bn=bn, bk=bk, num_stages=stages, interleave=interleave)
        name = "gated " + label(bn, bk, stages, interleave)
        try:
            h, amax = fused.gated_gemv(xq, xs, w, s, None, args.act, dtype, cfg)
            exact = torch.equal(h, want_h)
            db = sqnr(h.float(), want_h.float())
            if not db >= 35.0:
                bad.append(f"{name}: SQNR {db:.1f} dB")
            us = time(lambda i: fused.gated_gemv(xq, xs, ws[i], s, None, args.act, dtype, cfg), copies)
        except Exception as e:  # noqa: BLE001  (a config the compiler rejects)
            print(f"  {name:44s} {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}", flush=True)
            results.append(dict(name=name, config=cfg, error=str(e)[:300]))
            continue
        if not torch.equal(amax.amax(1), h.float().abs().amax(1)):
            bad.append(f"{name}: the amaxes' max is not the row's amax")
        print(f"  {name:44s} {us:8.2f} us   h bit-identical {'yes' if exact else 'NO '}  sqnr {db:6.1f}", flush=True)
        results.append(dict(name=name, config=cfg, us=us, bit_identical=exact, sqnr=db))
    # the down GEMV on the unfused path's 14 block amaxes vs the gated kernel's F / BN
    for bn in (None, 32, 64):
        amax = want_amax if bn is None else torch.stack(
            [c.float().abs().amax(1) for c in want_h.split(bn, 1)], 1)  # [1, NB]
        name = f"down mode 3, {amax.shape[1]} amaxes a row"
        us = time(lambda i: fp8_gemv.launch_block_scaled(want_h, amax, wd, sd, None, dtype), 1)
        print(f"  {name:44s} {us:8.2f} us", flush=True)
        results.append(dict(name=name, us=us))
    if DEVICE == "cpu":  # the interpreter's dot is a BLAS matmul: a row's sum may depend on its place in the tile
        print("  (interpreted: 'h bit-identical' may read NO there; the GPU's MMA does not move a row's sum)")
    base = results[0]["us"]
    timed = [r for r in results if r["name"].startswith("gated") and "us" in r]
    if DEVICE == "cuda" and timed:
        best = min(timed, key=lambda r: r["us"])
        down = {r["name"]: r["us"] for r in results if r["name"].startswith("down")}
        print(f"\n{card}, M = 1, CUDA-graph replays, weights rotated past L2")
        print(f"  unfused {base:.2f} us | default gated {timed[0]['us']:.2f} us | best {best['us']:.2f} us ({best['name']})")
        print(f"  down GEMV by amaxes a row: " + ", ".join(f"{k.split(', ')[1]}: {v:.2f} us" for k, v in down.items()))
        print(f"  a step (32 layers) with the default: {LAYERS * (base - timed[0]['us']):.1f} us saved before the down "
              f"GEMV's share")
    if args.json:
        args.json.write_text(json.dumps(dict(card=card, act=args.act, results=results, problems=bad), indent=1,
                                        default=str))
    for line in bad:
        print("PROBLEM", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
