"""Smoke check on the GPU image (torch 2.11 / transformers 5.17): export, transform and run every
tiny architecture on CUDA, comparing logits with eager transformers on the same weights.

    PYTHONPATH=$PWD python3 benchmarks/gpu_smoke.py [--device cuda] [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--experts", default="grouped_mm", help="experts_implementation on this device")
    args = ap.parse_args()
    import transformers
    from transformers import AutoModelForCausalLM

    import autodeploy
    from tests.helpers.tiny_models import ARCHS, save_tiny

    print(f"torch {torch.__version__} transformers {transformers.__version__} device {args.device}", flush=True)
    failures = 0
    for name in ARCHS:
        t0 = time.perf_counter()
        try:
            d = tempfile.mkdtemp()
            save_tiny(name, d)
            rt = autodeploy.optimize(d, "cpu", device=args.device, dtype=args.dtype,
                                     experts_implementation=args.experts)
            moe = {"experts_implementation": args.experts} if rt.arch.moe else {}
            ref = AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, args.dtype), **moe).to(args.device).eval()
            ids = torch.randint(0, 256, (3, 17), device=args.device)
            pos = torch.arange(17, device=args.device).expand(3, 17)
            with torch.no_grad():
                want = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
                got = rt.forward(ids, pos)
            if got.dim() == 2:  # cache-inserted graphs return last-token logits only
                want = want[:, -1]
            err = (got.float() - want.float()).abs().max().item() / (want.float().abs().max().item() or 1)
            print(f"{name:12s} rel_err {err:.2e}  {time.perf_counter() - t0:5.1f}s", flush=True)
            failures += err > 1e-3
        except Exception as e:
            failures += 1
            print(f"{name:12s} FAIL {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc(file=sys.stderr)
    print(f"{len(ARCHS) - failures}/{len(ARCHS)} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
