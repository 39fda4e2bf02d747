"""Where a decode step's time goes on the GPU: engine step vs forward vs graph replay, host phases,
and the kernels of one replayed step.

    PYTHONPATH=$PWD python3 benchmarks/profile_decode.py [--source random:llama-3.2-1b] [--batch 1,16]

Prints, per batch size: ms per engine step (what a user sees), ms per CompiledModel.forward
(pack + replay, synced), ms per bare graph replay (CUDA events), the host phases of the engine
step, and the top kernels of one replay by GPU time.

Sharded (under torchrun: `torchrun --nproc-per-node 2 benchmarks/profile_decode.py ...`), rank 0
profiles five engine steps instead of bare replays (a replay on one rank alone would wait forever
in its first collective); the collectives' times then include each wait for the other ranks.
--trace writes the profiled steps as a Chrome trace (GPU idle gaps between kernels, host phases).
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
    ap.add_argument("--trace", default=None, help="write the profiled steps of the last batch size as a Chrome trace")
    ap.add_argument("--engine-trace", default=None, help="also profile 5 engine steps of the last batch size on one "
                    "GPU (host phases, eager kernels and the GPU idle time between graph replays) into this Chrome trace")
    args = ap.parse_args()
    from autodeploy.profiler.bench import build_runtime
    from autodeploy.runtime.sampling import SamplingParams

    batches = [int(b) for b in args.batch.split(",")]
    t0 = time.perf_counter()
    buckets = sorted(set(batches))  # the runtime rounds 1 up to 2 where torch.compile runs (compile/model.py)
    rt = build_runtime(args.source, args.recipe, ["runtime.kv_memory_gb=1.0", f"runtime.cuda_graph_batch_sizes={buckets}",
                                                  f"runtime.max_batch_size={max(buckets)}", "runtime.max_seq_len=1024",
                                                  "runtime.max_num_tokens=1024"] + args.set)
    from autodeploy.distributed import dist
    from autodeploy.distributed.launch import exit_ranks, follow_if_worker

    if follow_if_worker(rt):  # torchrun, a rank other than 0: run rank 0's steps until it stops
        return
    sharded = dist.is_initialized() and dist.world_size() > 1
    print(f"optimize {time.perf_counter() - t0:.1f} s" + (f" (rank 0 of {dist.world_size()})" if sharded else ""))
    eng = rt.engine
    model = eng.model
    cuda = torch.device(rt.recipe.runtime.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # a CPU run (gloo ranks) checks the script itself
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
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            rt.step()
        sync()
        step_ms = (time.perf_counter() - t) / args.steps * 1e3
        eng.scheduler.schedule, eng._sequence_info = orig["schedule"], orig["_sequence_info"]
        model.forward, eng.sampler.sample = orig["forward"], orig["sample"]
        print(f"\n== batch {b}: engine step {step_ms:.3f} ms ({b / step_ms * 1e3:.0f} tok/s)")
        for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
            print(f"   host {k:16s} {v / args.steps * 1e3:.3f} ms/step (forward includes its GPU wait only if synced)")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA, ProfilerActivity.CPU] if cuda else [ProfilerActivity.CPU]
        if sharded or not cuda:  # a bare replay on rank 0 alone would wait forever in its first collective: profile engine steps
            with profile(activities=activities) as prof:
                for _ in range(5):
                    rt.step()
                sync()
            print("   rank 0, 5 engine steps (collectives include the wait for the other ranks):")
        else:
            B = min(k for k in model.graphs if k >= b)
            replay_ms = _replay_ms(model.graphs[B].graph, args.steps)
            print(f"   bare replay of bucket {B}: {replay_ms:.3f} ms")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model.graphs[B].graph.replay()
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=45, max_name_column_width=70))
        if args.trace:
            prof.export_chrome_trace(args.trace)
        if args.engine_trace and cuda and not sharded:  # what a user's step runs around the replay
            with profile(activities=activities) as prof:
                for _ in range(5):
                    rt.step()
                sync()
            prof.export_chrome_trace(args.engine_trace)
        for h in handles:
            rt.cancel(h)
        while eng.has_unfinished:
            rt.step()
    exit_ranks(0)  # sharded: release the followers and leave (a no-op on one rank)


def _replay_ms(graph, steps: int) -> float:
    """ms per replay of a captured decode graph, by CUDA events after 10 warm replays."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        graph.replay()
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


if __name__ == "__main__":
    main()
