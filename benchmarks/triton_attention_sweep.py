"""Launch-config sweep of the Triton paged-attention kernels, and host overhead per op call.

    PYTHONPATH=$PWD python3 benchmarks/triton_attention_sweep.py [--decode] [--prefill] [--overhead]

Decode configs are timed replayed from a CUDA graph (as the runtime runs them); prefill configs with
triton.testing.do_bench. Prints the best few configs per case next to the current defaults, so the
defaults in paged_attention_decode.py / paged_attention_prefill.py can be set from data.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.triton_kernels import SHAPES, _bench, _graph_bench, _paged, _r  # noqa: E402


def _time_configs(label, run, configs, use_graph):
    results = []
    for cfg in configs:
        try:
            t = (_graph_bench if use_graph else _bench)(lambda: run(**cfg))
        except Exception as e:  # a config the compiler rejects (registers, shared memory)
            print(f"    {cfg}: {type(e).__name__}", flush=True)
            continue
        results.append((t, cfg))
    results.sort(key=lambda r: r[0])
    default = next((t for t, c in results if c.get("default")), float("nan"))
    print(f"{label:34s} default {default:8.1f} us | best: " +
          ", ".join(f"{t:.1f} us {({k: v for k, v in c.items() if k != 'default'})}" for t, c in results[:3]), flush=True)


def sweep_decode():
    from autodeploy.backends.triton.paged_attention_decode import choose_num_splits, decode

    for shape, b, ctx in (("1b", 1, 384), ("1b", 1, 4096), ("1b", 16, 4096), ("1b", 64, 1024), ("8b", 1, 4096),
                          ("8b", 16, 4096)):
        h, n, n_kv, d, f = SHAPES[shape]
        info, q, k, v, kc, vc = _paged([(1, ctx - 1)] * b, n, n_kv, d)
        auto = choose_num_splits(b, n_kv, info.page_table.shape[1] * 64, q.device)
        configs = [dict(default=True)]
        for bn, w, st, sp in itertools.product((32, 64, 128), (2, 4), (2, 3), sorted({auto, 2 * auto, max(1, auto // 2)})):
            configs.append(dict(block_n=bn, num_warps=w, num_stages=st, num_splits=sp))

        def run(default=False, **cfg):
            return decode(q, kc, vc, info.page_table, info.cache_lens, d ** -0.5, **cfg)

        _time_configs(f"decode {shape} b={b} ctx={ctx} (auto S={auto})", run, configs, use_graph=True)


def sweep_prefill():
    from autodeploy.backends.triton.paged_attention_prefill import prefill

    for shape, chunks, label in (("1b", [(2048, 0)], "1x2048"), ("1b", [(512, 1536)], "chunk 512 after 1536"),
                                 ("8b", [(2048, 0)], "1x2048"),
                                 ("8b", [(512, 1536)], "chunk 512 after 1536")):
        h, n, n_kv, d, f = SHAPES[shape]
        info, q, k, v, kc, vc = _paged(chunks, n, n_kv, d)
        configs = [dict(default=True)]
        for bm, bn, w, st in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3)):
            configs.append(dict(block_m=bm, block_n=bn, num_warps=w, num_stages=st))

        def run(default=False, **cfg):
            return prefill(q, kc, vc, info.page_table, info.cu_seqlens, info.input_pos, info.cache_lens, d ** -0.5, **cfg)

        _time_configs(f"prefill {shape} {label}", run, configs, use_graph=False)


def host_overhead():
    """Host microseconds per call (GPU work is tiny, so the CPU is the bottleneck)."""
    from autodeploy.backends.triton import rmsnorm
    from autodeploy.backends.triton.paged_attention_decode import decode

    ops = torch.ops.autodeploy
    x, w = _r(1, 2048), _r(2048)
    out = torch.empty_like(x)
    info, q, k, v, kc, vc = _paged([(1, 383)], 32, 8, 64)
    meta = (info.seq_lens, info.cu_seqlens, info.input_pos, info.cache_lens, info.page_table, info.slot_mapping)
    calls = {
        "torch.ops.autodeploy.rmsnorm (reference)": lambda: ops.rmsnorm(x, w, 1e-5, False),
        "torch.ops.autodeploy.triton_rmsnorm": lambda: ops.triton_rmsnorm(x, w, 1e-5, False),
        "rmsnorm.launch (no custom op)": lambda: rmsnorm.launch(x, w, 1e-5, False),
        "raw _rmsnorm_kernel[grid]": lambda: rmsnorm._rmsnorm_kernel[(1,)](
            x, x, w, out, out, 2048, 2048, 2048, 2048, 2048, 1e-5, HAS_RESIDUAL=False, UNIT_OFFSET=False,
            BLOCK_H=2048, num_warps=4),
        "torch.ops.autodeploy.triton_cached_attention b=1": lambda: ops.triton_cached_attention(
            q, k, v, kc, vc, *meta, None, None, None, None),
        "decode() b=1 (no custom op, no kv write)": lambda: decode(q, kc, vc, info.page_table, info.cache_lens, 0.125),
    }
    for name, fn in calls.items():
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(1000):
            fn()
        torch.cuda.synchronize()
        print(f"{name:52s} {(time.perf_counter() - t0) * 1e3:8.1f} us per call", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--overhead", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    import autodeploy.backends.triton  # noqa: F401
    import autodeploy.ops  # noqa: F401

    torch.manual_seed(0)
    everything = not (args.decode or args.prefill or args.overhead)
    if args.overhead or everything:
        host_overhead()
    if args.decode or everything:
        sweep_decode()
    if args.prefill or everything:
        sweep_prefill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
