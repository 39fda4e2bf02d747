"""CPU generation throughput: SmolLM2-135M-Instruct through autodeploy's runtime against
transformers `generate` on the same machine, at batch 1 and batch 8, greedy, fixed output length.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cpu_generate.py [--tokens 64] [--batches 1,8] [--write BENCHMARKS.md]

tokens/s = batch * new tokens / wall time of the whole generate call (prefill included), best of
--repeats runs after one warm-up. Both sides produce exactly --tokens tokens per prompt (EOS is
masked until then: min_tokens / min_new_tokens) from the same dequantized GGUF weights in float32.
With --write, the result replaces the "CPU generate" section of the file (or is appended).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the ocean.",
    "Explain in one sentence what a compiler does.",
    "List three prime numbers:",
    "Once upon a time, in a small village by the mountains,",
    "def quicksort(arr):",
    "The most important invention of the twentieth century was",
    "Translate to French: I would like a cup of coffee.",
]
SECTION = "## CPU generate: SmolLM2-135M-Instruct"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy inits
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (at most 8)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", type=Path, default=None, help="record the result in this markdown file")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    n = args.tokens

    import autodeploy
    from autodeploy.runtime.sampling import SamplingParams
    from transformers import AutoModelForCausalLM

    rt = autodeploy.optimize("example:smollm2", "cpu", max_batch_size=max(batches), max_seq_len=512)
    model_kind = type(rt.model).__name__
    hf = AutoModelForCausalLM.from_pretrained(rt.source.location, gguf_file=rt.source.gguf_file,
                                              dtype=torch.float32).eval()
    tok = rt.tokenizer
    tok.padding_side = "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    rows = []
    for b in batches:
        prompts = PROMPTS[:b]
        params = SamplingParams(max_tokens=n, min_tokens=n)
        ours = {}

        def run_ours():
            ours["out"] = rt.generate(prompts, params)

        enc = tok(prompts, return_tensors="pt", padding=True)
        theirs = {}

        def run_hf():
            with torch.inference_mode():
                theirs["out"] = hf.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_id)

        t_ours = best_time(run_ours, args.repeats)
        t_hf = best_time(run_hf, args.repeats)
        assert all(len(o.token_ids) == n for o in ours["out"]), "autodeploy produced fewer tokens than asked"
        same = sum(o.token_ids == theirs["out"][i, enc.input_ids.shape[1]:].tolist() for i, o in enumerate(ours["out"]))
        rows.append((b, b * n / t_ours, b * n / t_hf, same))
        print(f"batch {b}: autodeploy {b * n / t_ours:.1f} tok/s, transformers {b * n / t_hf:.1f} tok/s, "
              f"greedy outputs identical for {same}/{b}", flush=True)

    if args.write:
        env = "".join(f"{k}={os.environ[k]} " for k in ("OMP_NUM_THREADS",) if k in os.environ)
        cmd = env + "PYTHONPATH=$PWD .venv/bin/python benchmarks/cpu_generate.py " + " ".join(sys.argv[1:])
        lines = [
            SECTION,
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {cpu_name()}, {os.cpu_count()} logical cores (torch threads: {torch.get_num_threads()}), "
            f"{platform.system()} {platform.release()}; torch {torch.__version__}; 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f} (other jobs share the machine)",
            f"- command: `{cmd}`",
            f"- workload: greedy, {n} new tokens per prompt, prompts of 6-13 tokens, float32 (GGUF Q4_1 dequantized), "
            f"autodeploy cpu recipe (paged model: {model_kind}), wall time of the whole generate call, best of "
            f"{args.repeats} after a warm-up",
            "",
            "| batch | autodeploy tok/s | transformers generate tok/s | autodeploy / transformers | identical greedy outputs |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {b} | {a:.1f} | {h:.1f} | {a / h:.2f}x | {s}/{b} |" for b, a, h, s in rows]
        block = "\n".join(lines) + "\n"
        text = args.write.read_text() if args.write.exists() else "# Benchmarks\n"
        pattern = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
        text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
        args.write.write_text(text)
        print(f"recorded in {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
