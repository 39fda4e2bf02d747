"""Where a decode step's time goes on the GPU: engine step vs forward vs graph replay, host phases,
and the kernels of one replayed step.

    PYTHONPATH=$PWD python3 benchmarks/profile_decode.py [--source random:llama-3.2-1b] [--batch 1,16]

Prints, per batch size: ms per engine step (what a user sees), ms per CompiledModel.forward
(pack + replay, synced), ms per bare graph replay (CUDA events), the host phases of the engine
step, and the top kernels of one replay by GPU time.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch


def timed(obj, name, acc):
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        acc[name] += time.perf_counter() - t0
        return out

    setattr(obj, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="random:llama-3.2-1b")
    ap.add_argument("--recipe", default="h100")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable), "
                    "e.g. transforms.quantize_fp8.enabled=true")
    args = ap.parse_args()
    from autodeploy.profiler.bench import build_runtime
    from autodeploy.runtime.sampling import SamplingParams

    batches = [int(b) for b in args.batch.split(",")]
    t0 = time.perf_counter()
    buckets = sorted(set(max(2, b) for b in batches))
    rt = build_runtime(args.source, args.recipe, ["runtime.kv_memory_gb=1.0", f"runtime.cuda_graph_batch_sizes={buckets}",
                                                  f"runtime.max_batch_size={max(buckets)}", "runtime.max_seq_len=1024",
                                                  "runtime.max_num_tokens=1024"] + args.set)
    print(f"optimize {time.perf_counter() - t0:.1f} s")
    eng = rt.engine
    model = eng.model
    for b in batches:
        prompts = [[(7 * i + j) % 1000 + 10 for j in range(128)] for i in range(b)]
        sp = SamplingParams(max_tokens=args.steps + 40, ignore_eos=True)
        handles = [rt.submit(p, sp) for p in prompts]
        while any(r.num_output < 20 for r in eng.requests.values()):  # prefill + warm decodes
            rt.step()
        acc: dict[str, float] = defaultdict(float)
        orig = {"schedule": eng.scheduler.schedule, "_sequence_info": eng._sequence_info,
                "forward": model.forward, "sample": eng.sampler.sample}
        timed(eng.scheduler, "schedule", acc)
        timed(eng, "_sequence_info", acc)
        timed(model, "forward", acc)
        timed(eng.sampler, "sample", acc)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            rt.step()
        torch.cuda.synchronize()
        step_ms = (time.perf_counter() - t) / args.steps * 1e3
        eng.scheduler.schedule, eng._sequence_info = orig["schedule"], orig["_sequence_info"]
        model.forward, eng.sampler.sample = orig["forward"], orig["sample"]
        B = min(k for k in model.graphs if k >= max(2, b))
        g = model.graphs[B].graph
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(10):
            g.replay()
        start.record()
        for _ in range(args.steps):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        replay_ms = start.elapsed_time(end) / args.steps
        print(f"\n== batch {b}: engine step {step_ms:.3f} ms ({b / step_ms * 1e3:.0f} tok/s), "
              f"bare replay of bucket {B}: {replay_ms:.3f} ms")
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"   host {k:16s} {v / args.steps * 1e3:.3f} ms/step (forward includes its GPU wait only if synced)")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                g.replay()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70))
        for h in handles:
            rt.cancel(h)
        while eng.has_unfinished:
            rt.step()


if __name__ == "__main__":
    main()
