#!/usr/bin/env bash
# The acceptance run for issues 5-7 in one 2-GPU device call (about 10 minutes), as gpu_stages.sh stages:
#   GPU 0: 1B bench at batch 1 / 16 with transformers eager + static baselines (cold caches), the same
#          bench again (warm optimize), the 1000-request serving run, the 8B TP=1 bench;
#   GPU 1: 8B bf16 / fp8 / int4 batch-1 decode (benchmarks/quant_gpu.py), then tiny-config greedy parity;
#   both:  the 8B TP=2 bench with the TP=1 settings.
#   run(command="bash benchmarks/gpu_final.sh", kind="nvidia-h100-x2", carry=[".whl"])
exec bash "$(dirname "$0")/gpu_stages.sh" "bench_1b+bench_1b_warm+serve+tp1@0:440 quant+parity@1:440" "tp2@01:140"
