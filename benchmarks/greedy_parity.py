"""Greedy tokens on the GPU against the CPU reference path, on tiny random configs.

For each architecture: the same seeded tiny model is optimized twice — the cpu recipe (float32,
eager, torch reference ops) and a GPU recipe (default h100: Triton kernels, torch.compile, CUDA
graphs; float32 so the two compute the same function) — and each generates N greedy tokens for a
few prompts. Reported per prompt: the first position where the tokens differ (or none) and, there,
the logit gap of the CPU reference between its own token and the GPU's (a near-tie when small).

    PYTHONPATH=$PWD python3 benchmarks/greedy_parity.py --archs llama,qwen3,gemma2 --tokens 32 --json out.json
    ... --set runtime.torch_compile=false             # GPU recipe overrides (repeatable)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

PROMPTS = [[5, 17, 33, 2, 9, 100, 7], [200, 3], [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54]]


def _tokens(model_dir: str, recipe: str, overrides: list[str], n: int) -> tuple[list[list[int]], dict]:
    from autodeploy.profiler.bench import build_runtime
    from autodeploy.runtime.sampling import SamplingParams

    t0 = time.perf_counter()
    rt = build_runtime(model_dir, recipe, overrides)
    optimize_s = time.perf_counter() - t0
    outs = rt.generate(PROMPTS, SamplingParams(max_tokens=n, ignore_eos=True))
    errors = [o.error for o in outs if o.error]
    if errors:
        raise RuntimeError(errors[0])
    info = {"optimize_s": optimize_s, "model": type(rt.model).__name__,
            "cuda_graph_replays": getattr(rt.model, "replays", None)}
    return [o.token_ids for o in outs], info


@torch.inference_mode()
def _logit_gap(model_dir: str, prefix: list[int], cpu_tok: int, gpu_tok: int) -> float:
    """CPU fp32 transformers logits after `prefix`: logit[cpu token] - logit[gpu token]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    logits = model(torch.tensor([prefix])).logits[0, -1]
    return float(logits[cpu_tok] - logits[gpu_tok])


def compare_arch(arch: str, n: int, gpu_recipe: str, dtype: str, device: str = "cuda", extra: list[str] = ()) -> dict:
    from tests.helpers.tiny_models import save_tiny

    d = tempfile.mkdtemp(prefix=f"parity_{arch}_")
    save_tiny(arch, d)
    small = ["runtime.max_batch_size=4", "runtime.max_seq_len=128", "runtime.max_num_tokens=256",
             "runtime.kv_page_size=16", "runtime.kv_num_pages=64"]
    cpu, cpu_info = _tokens(d, "cpu", small, n)
    gpu, gpu_info = _tokens(d, gpu_recipe, small + [f"runtime.device={device}", f"runtime.dtype={dtype}",
                                                    "runtime.cuda_graph_batch_sizes=[1,2,4]", *extra], n)
    rows = []
    for prompt, c, g in zip(PROMPTS, cpu, gpu):
        pos = next((i for i, (a, b) in enumerate(zip(c, g)) if a != b), None)
        row = {"prompt_len": len(prompt), "first_divergence": pos}
        if pos is not None:
            row["cpu_token"], row["gpu_token"] = c[pos], g[pos]
            row["logit_gap"] = _logit_gap(d, prompt + c[:pos], c[pos], g[pos])
        rows.append(row)
    return {"arch": arch, "tokens": n, "match": all(r["first_divergence"] is None for r in rows), "prompts": rows,
            "cpu": cpu_info, "gpu": gpu_info}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="llama,qwen3,gemma2", help="tiny configs (tests/helpers/tiny_models.py) or 'all'")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--recipe", default="h100", help="GPU recipe")
    ap.add_argument("--dtype", default="float32", help="GPU dtype (the CPU reference is float32)")
    ap.add_argument("--device", default="cuda", help="device of the compared path (cpu: checks the script itself)")
    ap.add_argument("--set", action="append", default=[], help="extra override of the GPU recipe (repeatable)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from tests.helpers.tiny_models import ARCHS

    archs = ARCHS if args.archs == "all" else args.archs.split(",")
    results, failed = [], 0
    for arch in archs:
        t0 = time.perf_counter()
        try:
            res = compare_arch(arch, args.tokens, args.recipe, args.dtype, args.device, args.set)
        except Exception as e:  # one architecture failing never stops the others
            traceback.print_exc(file=sys.stderr)
            res = {"arch": arch, "match": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        res["seconds"] = time.perf_counter() - t0
        failed += not res["match"]
        divs = [p["first_divergence"] for p in res.get("prompts", [])]
        gaps = [f"{p['logit_gap']:.2e}" for p in res.get("prompts", []) if "logit_gap" in p]
        print(f"{arch:12s} {'match' if res['match'] else 'DIFF '} divergence {divs} gaps {gaps} "
              f"{res.get('error', '')} ({res['seconds']:.0f} s)", flush=True)
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"{len(archs) - failed}/{len(archs)} architectures match for the first {args.tokens} greedy tokens")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
