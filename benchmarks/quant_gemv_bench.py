"""Quantized decode GEMVs on Llama-3.1-8B weight shapes: bf16 cuBLAS vs FP8 and INT4 paths, M = 1 and 16.

    PYTHONPATH=$PWD python3 benchmarks/quant_gemv_bench.py [--rows 1 16] [--budget-s 80] [--json out.json]

Per weight (qkv [6144, 4096], o [4096, 4096], gate_up [28672, 4096], down [4096, 14336],
lm_head [128256, 4096]) and row count, each backend:
  bf16        F.linear on bf16 weights (cuBLAS): the baseline
  fp8 mm      autodeploy::fp8_linear as it runs today on Hopper: per-token quantization of x (torch
              ops), then torch._scaled_mm with row-wise scales (cuBLASLt)
  fp8 mm*     torch._scaled_mm alone on an already-quantized x: what the GEMM itself costs
  fp8 gemv    autodeploy::triton_fp8_linear's kernel (backends/triton/fp8_gemv.py): launch_config's
              default, then a few neighbours (x quantized in the kernel or by its prologue, tiles)
  int4 old    the int4 GEMM kernel with its own decode config (int4_gemm.launch_config)
  int4 gemv   backends/triton/int4_gemv.py (tl.dot): the default, then neighbours (tiles, magic codes on/off)
  int4 fma    backends/triton/int4_gemv_fma.py (no tl.dot; rows <= 4): the default, x gathered instead
              of x_planes(), then neighbours (tiles, warps, a K split)
  int4 kmaj   backends/triton/int4_kmajor_gemv.py on the K-major layout (rows <= 4; the weight copies
              repacked by quantization/int4_kmajor.py first): the default (bf16x2 math,
              int4_kmajor_gemv_bf16x2.py), the default with fp32 math, then neighbours (BN, words
              per step BW, warps, the K split x 1/2 and x 2)
--backends picks a subset (e.g. `--rows 1 --backends bf16 "int4 fma" "int4 kmaj"`: the K-major sweep
over the 8B weights with its baselines, ~100 s on an H100).
Then, for qkv and gate_up (unless --no-norm; --norm-only: just these), the residual add + RMSNorm before
them as an FP8 decode step runs it (the candidates select_backends times for autodeploy::add_rmsnorm_fp8_linear):
  fp8 norm+q+gemv  the Triton norm kernel, fp8_gemv's quantization kernel, the GEMV: 3 launches (unfused)
  fp8 normq+gemv   add + RMSNorm + e4m3 quantization in one kernel, then the same GEMV: 2 launches
                   (backends/triton/add_rmsnorm_fp8_linear.py, transforms/fuse_norm_into_gemv.py)
  fp8 norm+mm      the Triton norm kernel, then fp8_linear's torch quantization + torch._scaled_mm
e.g. PYTHONPATH=$PWD python3 benchmarks/quant_gemv_bench.py --norm-only --rows 1 16
Every call is timed as CALLS calls captured in one CUDA graph, replayed (triton.testing.do_bench,
median), over enough copies of the weight that none is still in L2 when its turn comes again (a
decode step reads each weight once from HBM). GB/s counts the weight's bytes only (int4: packed
codes + bf16 scales and zeros). Each variant's output is checked first (SQNR >= 30 dB against an
fp32 product of the same quantized operands); a mismatch is reported and makes the exit code 1.

The summary adds up a decode step's weight GEMMs (32 x (qkv, o, gate_up, down) + lm_head) per
backend, best config per weight, with lm_head in bf16 (the recipes leave it unquantized) and quantized.
Non-default configs are skipped once --budget-s is spent (compiles dominate: ~1-2 s per config).
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

from benchmarks.triton_linear_sweep import CALLS as SWEEP_CALLS  # noqa: E402
from benchmarks.triton_linear_sweep import graph_us as sweep_graph_us  # noqa: E402

BF16 = torch.bfloat16
DEVICE = "cuda"  # --cpu-check: "cpu", kernels interpreted, tiny shapes, no timing
ACT = BF16  # activations; --cpu-check: fp16 (the interpreter's bf16 tl.dot is wrong)
LAYERS = 32
WEIGHTS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
           "lm_head": (128256, 4096)}
GROUP = 128
CALLS = SWEEP_CALLS  # graph_us captures this many calls
# neighbours of the defaults: (BN, BK, num_warps, num_stages); (64, 512, 4, 4) is the bf16 GEMV's H200 winner
# in bytes (64 rows x 512 B x 4 stages in flight, benchmarks/results/2026-11-28-session7/c2_linear_sweep.txt)
FP8_TILES = [(16, 256, 4, 6), (32, 256, 4, 5), (64, 256, 4, 4), (32, 512, 4, 3), (64, 512, 4, 3), (64, 512, 4, 4),
             (128, 256, 8, 3)]
FP8_SPLIT_TILES = [(64, 256, 4, 4), (64, 512, 4, 3), (64, 512, 4, 4), (32, 256, 4, 4)]
FP8_SPLITS = (1, 2, 3, 4, 6, 8)
INT4_TILES = [(16, 128, 4, 8), (32, 128, 4, 6), (64, 128, 4, 4), (128, 128, 8, 4), (16, 128, 4, 12),
              (32, 128, 4, 10), (64, 128, 8, 6)]
# int4 fma: (BN, BK bytes per row per step, num_warps, split); each compiled to SASS without shared-memory
# shuffles in the loop (tiles of <= 16 words per thread, <= 2 group chunks per step)
# int4 kmaj: (BN, BW words per step, num_warps, K split as a multiple of the default rule's); columns per
# thread = BN / (32 num_warps): 4 (16-byte loads) or 8
KMAJ_TILES = [(256, 4, 2, 2), (256, 16, 2, 1), (256, 16, 2, 2), (512, 8, 4, 1), (512, 8, 4, 2), (1024, 8, 8, 1),
              (256, 8, 2, 0.5), (256, 8, 2, 1), (256, 8, 2, 4)]
FMA_TILES = [(8, 256, 4, 1), (16, 256, 4, 1), (16, 128, 4, 1), (32, 256, 4, 1), (32, 128, 4, 1), (64, 128, 4, 1),
             (16, 256, 8, 1), (8, 128, 2, 1), (16, 256, 4, 2), (32, 256, 4, 2)]


def graph_us(call, copies: int) -> float:
    """triton_linear_sweep.graph_us with a shorter budget (many variants per weight); 1.0 on --cpu-check."""
    if DEVICE == "cpu":
        return 1.0
    return sweep_graph_us(call, copies, warmup=3, rep=15)


class Case:
    """One (weight, rows): timings of every variant, checked against fp32 truths first."""

    def __init__(self, name, m, n, k, l2_bytes, deadline, results, mismatches):
        self.name, self.m, self.n, self.k = name, m, n, k
        self.l2, self.deadline, self.results, self.mismatches = l2_bytes, deadline, results, mismatches
        self.best: dict[str, tuple[float, str]] = {}

    def copies(self, nbytes: int) -> int:
        return min(CALLS, math.ceil(2 * self.l2 / nbytes) + 1)

    def time(self, backend, label, fn, truth, nbytes, copies, optional=False):
        """fn(i) -> output on weight copy i; truth: fp32 [M, N]."""
        if backend not in SELECTED or (optional and time.monotonic() > self.deadline):
            return
        try:
            out = fn(0)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            db = sqnr(out, truth)
            if not db >= 30.0:
                self.mismatches.append(f"{self.name} M={self.m} {backend} {label}: SQNR {db:.1f} dB")
                self.results.append(dict(case=self.name, m=self.m, backend=backend, config=label, error="mismatch"))
                return
            us = graph_us(fn, copies)
        except Exception as e:  # noqa: BLE001  (a config the compiler rejects: registers, shared memory)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
            print(f"    {backend:9s} {label:34s} {msg}", flush=True)
            self.results.append(dict(case=self.name, m=self.m, backend=backend, config=label, error=msg))
            return
        gbs = nbytes / us / 1e3
        print(f"    {backend:9s} {label:34s} {us:8.1f} us {gbs:6.0f} GB/s  sqnr {db:5.1f}", flush=True)
        self.results.append(dict(case=self.name, m=self.m, backend=backend, config=label, us=us, gbs=gbs, sqnr=db))
        if backend not in self.best or us < self.best[backend][0]:
            self.best[backend] = (us, label)


def sqnr(out, truth) -> float:
    from autodeploy.quantization.metrics import sqnr as _sqnr

    return _sqnr(out.float(), truth)


def run_case(case: Case, sms: int) -> None:
    wants = lambda *names: any(b in SELECTED for b in names)  # noqa: E731

    m, n, k = case.m, case.n, case.k
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    w = torch.randn(n, k, device=DEVICE, generator=gen) * k**-0.5
    x = torch.randn(m, k, device=DEVICE, generator=gen)
    x[:, 7] *= 25.0  # an outlier channel, as post-norm activations have
    x = x.to(ACT)

    # bf16 cuBLAS
    wb = w.to(ACT)
    nb = n * k * 2
    cp = case.copies(nb)
    ws = [wb] + [wb.clone() for _ in range(cp - 1 if wants("bf16") else 0)]
    truth = F.linear(x.float(), wb.float())
    case.time("bf16", "cuBLAS", lambda i: F.linear(x, ws[i]), truth, nb, cp)
    del ws, wb
    if wants("fp8 mm", "fp8 mm*", "fp8 gemv"):
        _fp8_variants(case, x, w, sms)
    if wants("int4 old", "int4 gemv", "int4 fma", "int4 kmaj"):
        _int4_variants(case, x, w, sms)
    del w, x
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def _fp8_variants(case: Case, x, w, sms: int) -> None:
    from autodeploy.backends.triton import fp8_gemv
    from autodeploy.quantization import fp8

    m, n, k = case.m, case.n, case.k

    # FP8: the reference path, _scaled_mm alone, the GEMV
    p = fp8.quantize(w)
    w8, s8 = p["weight"], p["weight_scale"]
    nb = n * k
    cp = case.copies(nb)
    w8s = [w8] + [w8.clone() for _ in range(cp - 1)]
    xq, xs = fp8.quantize_rows(x)
    truth = F.linear(xq.float() * xs, fp8.dequantize(w8, s8))
    case.time("fp8 mm", "quantize_rows + _scaled_mm", lambda i: torch.ops.autodeploy.fp8_linear(x, w8s[i], s8),
              truth, nb, cp)
    ws_row = s8.float().reshape(1, -1).contiguous()
    if DEVICE == "cuda":
        case.time("fp8 mm*", "_scaled_mm (x pre-quantized)",
                  lambda i: torch._scaled_mm(xq, w8s[i].t(), scale_a=xs, scale_b=ws_row, out_dtype=BF16,
                                             use_fast_accum=True), truth, nb, cp)
    default = dict(fp8_gemv.launch_config(m, n, k, sms))
    variants = [("default " + _fp8_label(default), default, False)]
    variants.append(("default, x " + ("in kernel" if default["x_prologue"] else "prologue"),
                     dict(default, x_prologue=not default["x_prologue"]), True))
    variants.append(("default, fp16 products", dict(default, fp8_dot=False), True))
    for bn, bk, warps, stages in FP8_TILES:
        cfg = dict(bn=bn, bk=bk, split=1, num_warps=warps, num_stages=stages, x_prologue=default["x_prologue"])
        variants.append((_fp8_label(cfg), cfg, True))
    # K splits merged in the launch (fp8_gemv.py's tickets), beside the default's own split
    for bn, bk, warps, stages in FP8_SPLIT_TILES:
        for split in FP8_SPLITS:
            if split != default["split"] and k // bk >= 2 * split:
                cfg = dict(bn=bn, bk=bk, split=split, num_warps=warps, num_stages=stages, x_prologue=default["x_prologue"])
                variants.append((_fp8_label(cfg), cfg, True))
    for label, cfg, optional in variants:
        case.time("fp8 gemv", label, lambda i, cfg=cfg: fp8_gemv.launch(x, w8s[i], s8, None, True, cfg),
                  truth, nb, cp, optional)
    del w8s, p, w8


def _int4_variants(case: Case, x, w, sms: int) -> None:
    from autodeploy.backends.triton import int4_gemm, int4_gemv, int4_gemv_fma, int4_kmajor_gemm, int4_kmajor_gemv
    from autodeploy.quantization import int4, int4_kmajor

    m, n, k = case.m, case.n, case.k
    # INT4 weight-only, g = 128
    p = int4.quantize(w.to(ACT), GROUP)
    qw, s4, z4 = p["qweight"], p["scales"], p["zeros"]
    nb = n * k // 2 + 2 * 2 * n * (k // GROUP)
    cp = case.copies(nb)
    qws = [qw] + [qw.clone() for _ in range(cp - 1)]
    truth = F.linear(x.float(), int4.dequantize(qw, s4, z4, GROUP, torch.float32))
    old = int4_gemm.launch_config(m, n, k // 2, GROUP, sms)
    case.time("int4 old", f"bm={old['bm']} bn={old['bn']} bk={old['bk']} split={old['split']}",
              lambda i: int4_gemm.launch(x, qws[i], s4, z4, None, GROUP, old), truth, nb, cp)
    default = dict(int4_gemv.launch_config(m, n, k // 2, GROUP, sms))
    variants = [("default " + _int4_label(default), default, False),
                ("default, no magic", dict(default, magic=False), True)]
    for bn, bk, warps, stages in INT4_TILES:
        variants.append((_int4_label(dict(bn=bn, bk=bk, num_warps=warps, num_stages=stages, split=1)),
                         dict(kind="gemv", bn=bn, bk=bk, split=1, num_warps=warps, num_stages=stages), True))
    for label, cfg, optional in variants:
        case.time("int4 gemv", label, lambda i, cfg=cfg: int4_gemm.launch(x, qws[i], s4, z4, None, GROUP, cfg),
                  truth, nb, cp, optional)
    if m <= int4_gemv_fma.MAX_ROWS:
        default = dict(int4_gemv_fma.launch_config(m, n, k // 2, GROUP, sms))
        variants = [("default " + _fma_label(default), default, False),
                    ("default, x gathered", dict(default, x_planes=False), True)]
        for bn, bk, warps, split in FMA_TILES:
            cfg = dict(kind="gemv_fma", bn=bn, bk=bk, split=split, num_warps=warps, num_stages=1)
            variants.append((_fma_label(cfg), cfg, True))
        for label, cfg, optional in variants:
            case.time("int4 fma", label, lambda i, cfg=cfg: int4_gemm.launch(x, qws[i], s4, z4, None, GROUP, cfg),
                      truth, nb, cp, optional)
    if m <= int4_kmajor_gemv.MAX_ROWS and "int4 kmaj" in SELECTED:
        kmaj = [int4_kmajor.from_half_split(q, s4, z4, GROUP) for q in qws]  # [(words [K/8, N], s_t, z_t)]
        del qws
        default = dict(int4_kmajor_gemv.launch_config(m, n, k, GROUP, sms, bf16x2=True))
        fp32 = dict(int4_kmajor_gemv.launch_config(m, n, k, GROUP, sms), packed=False)  # the bf16x2 kernel's predecessor
        variants = [("default " + _kmaj_label(default), default, False),
                    ("default, fp32 math " + _kmaj_label(fp32), fp32, False)]
        for bn, bw, warps, factor in KMAJ_TILES:
            split = max(1, round(factor * math.ceil(4 * sms / math.ceil(n / bn))))
            cfg = int4_kmajor_gemv.normalized(dict(kind="gemv", bn=bn, bw=bw, split=split, num_warps=warps,
                                                   num_stages=1), m, n, k, GROUP)
            variants.append((_kmaj_label(cfg), cfg, True))
        for label, cfg, optional in variants:
            case.time("int4 kmaj", label,
                      lambda i, cfg=cfg: int4_kmajor_gemm.launch(x, *kmaj[i], None, GROUP, cfg), truth, nb, cp, optional)


NORM_BACKENDS = ("fp8 norm+q+gemv", "fp8 normq+gemv", "fp8 norm+mm")


def run_norm_case(case: Case) -> None:
    """Add + RMSNorm before an FP8 projection: the unfused launches vs the norm + quantization kernel."""
    from autodeploy.backends.triton import add_rmsnorm_fp8_linear, fp8_gemv, rmsnorm
    from autodeploy.quantization import fp8

    m, n, k = case.m, case.n, case.k
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(m, k, device=DEVICE, generator=gen)
    x[:, 7] *= 25.0
    x, res = x.to(ACT), (3 * torch.randn(m, k, device=DEVICE, generator=gen)).to(ACT)
    nw = (torch.rand(k, device=DEVICE, generator=gen) + 0.5).to(ACT)
    p = fp8.quantize(torch.randn(n, k, device=DEVICE, generator=gen) * k**-0.5)
    w8, s8 = p["weight"], p["weight_scale"]
    cp = case.copies(n * k)
    w8s = [w8] + [w8.clone() for _ in range(cp - 1)]
    normed, _ = rmsnorm.launch(x, nw, 1e-5, False, residual=res)
    xq, xs = fp8.quantize_rows(normed)
    truth = F.linear(xq.float() * xs, fp8.dequantize(w8, s8))

    def norm_then(i, project):
        y, _ = rmsnorm.launch(x, nw, 1e-5, False, residual=res)
        return project(y, w8s[i])

    variants = {
        NORM_BACKENDS[0]: lambda i: norm_then(i, lambda y, w: fp8_gemv.launch(y, w, s8)),
        NORM_BACKENDS[1]: lambda i: add_rmsnorm_fp8_linear.launch(x, res, nw, 1e-5, False, w8s[i], s8)[0],
        NORM_BACKENDS[2]: lambda i: norm_then(i, lambda y, w: torch.ops.autodeploy.fp8_linear(y, w, s8)),
    }
    for backend, fn in variants.items():
        case.time(backend, "default", fn, truth, n * k, cp)
    del w8s, p, w8


def norm_summary(cases: list[Case], rows: list[int]) -> list[str]:
    """Per row count: the 8B step's 64 norm-fed sites (32 x qkv + gate_up) under each form."""
    lines = []
    for m in rows:
        by = {c.name: c for c in cases if c.m == m and any(b in c.best for b in NORM_BACKENDS)}
        if set(by) != {"qkv", "gate_up"}:
            continue
        out = []
        for b in NORM_BACKENDS:
            us = sum(by[nm].best.get(b, (math.nan,))[0] for nm in by)
            out.append(f"{b} {LAYERS * us / 1e3:.3f} ms ({us:.1f} us per layer)")
        lines.append(f"M={m} add + RMSNorm + FP8 qkv / gate_up, 8B step: " + "; ".join(out))
    return lines


def _fp8_label(c: dict) -> str:
    xq = "pro" if c.get("x_prologue") else "ink"
    return f"bn={c['bn']} bk={c['bk']} w={c['num_warps']} st={c['num_stages']} split={c.get('split', 1)} x={xq}"


def _int4_label(c: dict) -> str:
    return f"bn={c['bn']} bk={c['bk']} w={c['num_warps']} st={c['num_stages']} split={c.get('split', 1)}"


def _kmaj_label(c: dict) -> str:
    return f"bn={c['bn']} bw={c['bw']} w={c['num_warps']} split={c['split']}" + ("" if c.get("packed", True) else " fp32")


def _fma_label(c: dict) -> str:
    return f"bn={c['bn']} bk={c['bk']} w={c['num_warps']} split={c.get('split', 1)} x={'planes' if c.get('x_planes', True) else 'gather'}"


BACKENDS = ["bf16", "fp8 mm", "fp8 mm*", "fp8 gemv", "int4 old", "int4 gemv", "int4 fma", "int4 kmaj"]
SELECTED = list(BACKENDS)  # --backends


def summary(cases: list[Case], rows: list[int]) -> list[str]:
    lines = ["| weight | M | " + " | ".join(f"{b} us (GB/s)" for b in SELECTED) + " |",
             "|---|---|" + "---|" * len(SELECTED)]
    bytes_of = {"bf16": 2.0, "fp8 mm": 1.0, "fp8 mm*": 1.0, "fp8 gemv": 1.0, "int4 old": 0.5 + 4 / GROUP,
                "int4 gemv": 0.5 + 4 / GROUP, "int4 fma": 0.5 + 4 / GROUP, "int4 kmaj": 0.5 + 4 / GROUP}
    for c in cases:
        cells = []
        for b in SELECTED:
            if b in c.best:
                us = c.best[b][0]
                cells.append(f"{us:.1f} ({c.n * c.k * bytes_of[b] / us / 1e3:.0f})")
            else:
                cells.append("-")
        lines.append(f"| {c.name} | {c.m} | " + " | ".join(cells) + " |")
    lines.append("\nbest configs:")
    lines += [f"  {c.name:8s} M={c.m:<2d} " + " | ".join(f"{b}: {c.best[b][1]}" for b in ("fp8 gemv", "int4 gemv", "int4 fma", "int4 kmaj")
                                                     if b in c.best) for c in cases]
    lines.append("")
    for m in rows:
        by = {c.name: c for c in cases if c.m == m}
        if len(by) < len(WEIGHTS):
            continue
        bf16_head = by["lm_head"].best.get("bf16", (math.nan,))[0]
        out = []
        for b in SELECTED:
            layers = sum(LAYERS * by[nm].best.get(b, (math.nan,))[0] for nm in WEIGHTS if nm != "lm_head")
            head = by["lm_head"].best.get(b, (math.nan,))[0]
            out.append(f"{b} {(layers + bf16_head) / 1e3:.3f} ms (lm_head quantized: {(layers + head) / 1e3:.3f})")
        lines.append(f"M={m} step weight GEMMs, 8B: " + "; ".join(out))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=list(WEIGHTS))
    ap.add_argument("--budget-s", type=float, default=150.0, help="after this, only default configs are timed")
    ap.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS, help="time only these")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-norm", action="store_true", help="skip the add + RMSNorm rows (qkv, gate_up)")
    ap.add_argument("--norm-only", action="store_true", help="only the add + RMSNorm rows (no GEMV sweep)")
    ap.add_argument("--cpu-check", action="store_true", help="run the script's logic on tiny shapes, interpreted")
    args = ap.parse_args()
    SELECTED[:] = args.backends
    if args.cpu_check:
        import os

        global DEVICE, ACT
        DEVICE, ACT = "cpu", torch.float16
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined
        WEIGHTS.update({name: (max(16, n // 256), k // 16) for name, (n, k) in WEIGHTS.items()})
    elif not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    import triton

    import autodeploy.backends.triton  # noqa: F401  (registers the ops)
    import autodeploy.ops  # noqa: F401

    t0 = time.monotonic()
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        sms, l2 = props.multi_processor_count, getattr(props, "L2_cache_size", 50 << 20)
        card = torch.cuda.get_device_name(0)
    else:
        sms, l2, card = 4, 1 << 16, "cpu (interpreted: a check of the script, no timings)"
    print(f"{card}: {sms} SMs, L2 {l2 >> 20} MB | torch {torch.__version__} | triton {triton.__version__}", flush=True)
    cases, results, mismatches = [], [], []
    for m in args.rows:
        for name in args.weights:
            if args.norm_only and name not in ("qkv", "gate_up"):
                continue
            n, k = WEIGHTS[name]
            print(f"{name} [{n}, {k}] M={m}", flush=True)
            case = Case(name, m, n, k, l2, t0 + args.budget_s, results, mismatches)
            if not args.norm_only:
                run_case(case, sms)
            if name in ("qkv", "gate_up") and not args.no_norm:
                run_norm_case(case)
            cases.append(case)
            if args.json:
                args.json.write_text(json.dumps(dict(card=card, results=results), indent=1))
    print(f"\n{card}, CUDA-graph replays of {CALLS} calls, weights rotated past L2 (best config per backend;"
          f" GB/s of weight bytes; {time.monotonic() - t0:.0f} s)")
    if not args.norm_only:
        print("\n".join(summary(cases, args.rows)))
    print("\n".join(norm_summary(cases, args.rows)))
    if mismatches:
        print("NUMERIC MISMATCH:\n  " + "\n  ".join(mismatches))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
