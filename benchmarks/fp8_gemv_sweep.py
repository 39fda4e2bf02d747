"""Launch-config sweep of the FP8 decode GEMV alone, in the x modes the 8B FP8 graph runs it with.

    PYTHONPATH=$PWD python3 benchmarks/fp8_gemv_sweep.py [--weights qkv o down] [--budget-s 240] [--json out.json]

quant_gemv_bench.py times fp8_gemv.launch, i.e. the per-token quantization kernel plus the GEMV. In an
FP8 decode step most GEMVs get x already quantized or with block amaxes beside it, so this times what
each site really launches (M = 1, Llama-3.1-8B weights):

    qkv, gate_up, lm_head   mode 2: e4m3 x + scales from the norm kernel (fp8_gemv.launch_quantized)
    o                       mode 2 alone, and the prologue kernel + mode 2 ("prologue+"), and mode 1
                            (x quantized in every program, fp8_gemv.launch with x_prologue False)
    down                    mode 3: bf16 x + 14 block amaxes (fp8_gemv.launch_block_scaled); beside it mode 2
                            (x pre-quantized: the GEMV alone): what quantizing x in the loop costs

Each config of TILES x SPLITS (splits leaving >= 2 BK steps each, only for weights with fewer tiles
than SMs) is checked against an fp32 truth (SQNR >= 30 dB), then captured as CALLS calls in one CUDA
graph over weight copies rotated past L2 (triton_linear_sweep.graph_us) and its median replay time
divided by CALLS. GB/s counts the weight bytes. The table ends with each site's best config and the
step's FP8 GEMV sum (32 layers + lm_head) with the defaults and with the best per site.
--cpu-check: the same logic on tiny shapes, interpreted, no timings (a check of the script).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WEIGHTS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
           "lm_head": (128256, 4096)}
LAYERS = 32
# (BN, BK bytes, num_warps, num_stages): the current defaults' tiles, the bf16 GEMV's H200 winner (64, 512, 4, 4)
# and neighbours in rows, step bytes and depth
TILES = [(64, 256, 4, 4), (64, 512, 4, 3), (64, 512, 4, 4), (64, 512, 4, 5), (64, 1024, 4, 3), (64, 1024, 8, 3),
         (32, 512, 4, 4), (32, 1024, 4, 3), (128, 512, 8, 3), (128, 256, 8, 4)]
SPLITS = (1, 2, 3, 4, 6)
DEVICE = "cuda"


def sites(weights: list[str]) -> list[tuple[str, str, int, int]]:
    """(site, mode, N, K): mode 2 / 3 / 'prologue+' / 1 as the module docstring says."""
    out = []
    for name in weights:
        n, k = WEIGHTS[name]
        if name == "o":
            out += [(name, "2", n, k), (name, "prologue+", n, k), (name, "1", n, k)]
        elif name == "down":
            out += [(name, "3", n, k), (name, "2", n, k)]
        else:
            out.append((name, "2", n, k))
    return out


def call_for(mode: str, x, xq, xs, amax, ws, s, cfg):
    from autodeploy.backends.triton import fp8_gemv

    if mode == "2":
        return lambda i: fp8_gemv.launch_quantized(xq, xs, ws[i], s, None, x.dtype, cfg)
    if mode == "3":
        return lambda i: fp8_gemv.launch_block_scaled(x, amax, ws[i], s, None, x.dtype, cfg)
    if mode == "prologue+":
        return lambda i: fp8_gemv.launch(x, ws[i], s, None, True, dict(cfg, x_prologue=True))
    return lambda i: fp8_gemv.launch(x, ws[i], s, None, True, dict(cfg, x_prologue=False))


def configs_for(n: int, k: int, sms: int, default: dict) -> list[tuple[str, dict]]:
    out = [("default " + label(default), default)]
    for bn, bk, warps, stages in TILES:
        for split in SPLITS:
            if split > 1 and (math.ceil(n / bn) >= sms or k // split < 2 * bk):
                continue
            if k % bk:
                continue
            cfg = dict(bn=bn, bk=bk, split=split, num_warps=warps, num_stages=stages)
            out.append((label(cfg), cfg))
    return out


def label(c: dict) -> str:
    return f"bn {c['bn']} bk {c['bk']} w {c['num_warps']} st {c['num_stages']} split {c.get('split', 1)}"


def main() -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS))
    ap.add_argument("--budget-s", type=float, default=240.0, help="after this, only the defaults are timed")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cpu-check", action="store_true", help="tiny shapes, interpreted, no timings")
    args = ap.parse_args()
    if args.cpu_check:
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE = "cpu"
        for key in WEIGHTS:
            WEIGHTS[key] = (128, 256) if key != "down" else (64, 512)
    from autodeploy.backends.triton import fp8_gemv
    from autodeploy.backends.triton._common import num_sms
    from autodeploy.quantization import fp8
    from autodeploy.quantization.metrics import sqnr

    if DEVICE == "cuda":
        from benchmarks.triton_linear_sweep import graph_us
        props = torch.cuda.get_device_properties(0)
        sms, l2, card = props.multi_processor_count, getattr(props, "L2_cache_size", 50 << 20), props.name
    else:
        sms, l2, card = 4, 1 << 16, "cpu (interpreted: a check of the script)"
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # the interpreter's bf16 tl.dot is wrong
    print(f"{card}: {sms} SMs, L2 {l2 >> 20} MB | triton {__import__('triton').__version__}", flush=True)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    deadline = time.monotonic() + args.budget_s
    results, mismatches, best, default_us = [], [], {}, {}
    for site, mode, n, k in sites(args.weights):
        w = torch.randn(n, k, device=DEVICE, generator=gen) * k**-0.5
        p = fp8.quantize(w)
        w8, s8 = p["weight"], p["weight_scale"]
        copies = min(20, math.ceil(2 * l2 / (n * k)) + 1)
        ws = [w8] + [w8.clone() for _ in range(copies - 1)]
        x = torch.randn(1, k, device=DEVICE, generator=gen).to(dtype)
        xq, xs = fp8_gemv.quantize_rows(x)
        nb = math.ceil(k / 1024)
        amax = torch.stack([x[:, b * 1024:(b + 1) * 1024].float().abs().amax(dim=1) for b in range(nb)], dim=1)
        truth = (xq.float() * xs[:, None]) @ fp8.dequantize(w8, s8).float().t()  # [1, N]
        default = dict(fp8_gemv.launch_config(1, n, k, num_sms(x.device)))
        print(f"\n{site} {n}x{k} mode {mode}", flush=True)
        for name, cfg in configs_for(n, k, sms, default):
            if not name.startswith("default") and time.monotonic() > deadline:
                break
            call = call_for(mode, x, xq, xs, amax, ws, s8, cfg)
            row = dict(site=site, mode=mode, n=n, k=k, config=name)
            try:
                db = sqnr(call(0).float(), truth)
                if not db >= 30.0:
                    mismatches.append(f"{site} mode {mode} {name}: SQNR {db:.1f} dB")
                    results.append(dict(row, error="mismatch"))
                    continue
                us = graph_us(call, copies) if DEVICE == "cuda" else 1.0
            except Exception as e:  # noqa: BLE001  (a config the compiler rejects: shared memory, registers)
                msg = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
                print(f"    {name:44s} {msg}", flush=True)
                results.append(dict(row, error=msg))
                continue
            gbs = n * k / us / 1e3
            print(f"    {name:44s} {us:8.2f} us {gbs:6.0f} GB/s  sqnr {db:5.1f}", flush=True)
            results.append(dict(row, us=us, gbs=gbs, sqnr=db))
            key = (site, mode)
            if name.startswith("default"):
                default_us[key] = us
            if key not in best or us < best[key][0]:
                best[key] = (us, name)
        del ws, p, w8
    print(f"\n{card}, M = 1, CUDA-graph replays, weights rotated past L2: best per site and mode")
    for (site, mode), (us, name) in best.items():
        d = default_us.get((site, mode))
        print(f"  {site:8s} mode {mode:10s} default {d if d is None else round(d, 2)} us | best {us:.2f} us ({name})")
    per_layer = {"qkv": "2", "o": "2", "gate_up": "2", "down": "3"}
    for which, table in (("defaults", default_us), ("best", {key: v[0] for key, v in best.items()})):
        if all((s, m) in table for s, m in per_layer.items()) and ("lm_head", "2") in table:
            step = LAYERS * sum(table[(s, m)] for s, m in per_layer.items()) + table[("lm_head", "2")]
            print(f"  step FP8 GEMVs ({which}; o without its quantization): {step / 1e3:.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(dict(card=card, results=results, mismatches=mismatches), indent=1))
    for line in mismatches:
        print("MISMATCH", line)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
