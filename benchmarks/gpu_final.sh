#!/usr/bin/env bash
# The acceptance run for issues 5-7 in one 2-GPU device call (about 10 minutes):
#   GPU 0: 1B bench at batch 1 / 16 with transformers eager + static baselines (cold caches), the same
#          bench again (warm optimize), the 1000-request serving run, the 8B TP=1 bench;
#   GPU 1: 8B bf16 / fp8 / int4 batch-1 decode (benchmarks/quant_gpu.py), then tiny-config greedy parity;
#   both:  the 8B TP=2 bench with the TP=1 settings.
#   run(command="bash benchmarks/gpu_final.sh", kind="nvidia-h100-x2", carry=[".whl"])
# JSON results under $OUT, logs in $OUT/logs.tgz, a summary last.
set -u
OUT=${OUT:-$PWD/out}; L=$OUT/logs; mkdir -p "$L"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$L/pip.log" 2>&1 || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export TORCHINDUCTOR_CACHE_DIR=/tmp/adc/i TRITON_CACHE_DIR=/tmp/adc/t
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader | tee "$L/env.txt"
T=${BUDGET_S:-585}
job() { local name=$1 limit=$2; shift 2; local left=$((T - SECONDS - 8)); (( limit > left )) && limit=$left
  (( limit < 20 )) && { echo "$name SKIPPED"; return; }; local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$L/$name.log" 2>&1; echo "$name rc=$? $((SECONDS - t0))s"; }
AD="python3 -m autodeploy bench"
B1=(random:llama-3.2-1b --recipe h100 --input-len 128 --output-len 256)
B8=(random:llama-3.1-8b --recipe h100 --batch-sizes 1 --input-len 128 --output-len 256 --no-baselines
    --set runtime.max_batch_size=1 --set runtime.max_seq_len=512 --set runtime.max_num_tokens=512
    --set "runtime.cuda_graph_batch_sizes=[1]" --set runtime.kv_memory_gb=1)
( export CUDA_VISIBLE_DEVICES=0 AUTODEPLOY_CACHE=/tmp/adc0
  job bench_1b 260 $AD "${B1[@]}" --batch-sizes 1,16 --baselines eager,static --json "$OUT/bench_1b.json"
  job bench_1b_warm 50 $AD "${B1[@]}" --batch-sizes 1 --output-len 32 --no-baselines --json "$OUT/bench_1b_warm.json"
  job serve 70 $AD "${B1[@]}" --batch-sizes 16 --serve-requests 1000 --rate inf --serve-input-len 128 \
    --serve-output-len 128 --no-baselines --json "$OUT/bench_serve.json"
  job tp1 120 $AD "${B8[@]}" --json "$OUT/tp1.json" ) &
( export CUDA_VISIBLE_DEVICES=1 AUTODEPLOY_CACHE=/tmp/adc1
  job quant 430 python3 benchmarks/quant_gpu.py --variants bf16,fp8,int4 --input-len 128 --output-len 256 \
    --budget-s 425 --timeout-s 145 --json "$OUT/quant_8b.json"
  job parity 60 python3 benchmarks/greedy_parity.py --archs llama,qwen3,gemma2 --tokens 32 --json "$L/parity.json" ) &
wait
AUTODEPLOY_CACHE=/tmp/adc0 job tp2 140 $AD "${B8[@]}" --world-size 2 --json "$OUT/tp2.json"
cp /tmp/adc0/autotune.json "$L/autotune_gpu0.json" 2>/dev/null; cp /tmp/adc1/autotune.json "$L/autotune_gpu1.json" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
python3 benchmarks/summarize.py "$OUT" 2>&1 | tail -25
tar xzf "$OUT/logs.tgz" -O logs/quant.log 2>/dev/null | tail -5
for t in tp1 tp2; do tar xzf "$OUT/logs.tgz" -O logs/$t.log 2>/dev/null | grep -E "fixed|rror" | tail -2; done
