#!/usr/bin/env bash
# One 2-GPU device call that checks and times the new decode kernels end to end:
#   GPU 0: GPU tests of the new kernels, the fused attention and gated-linear micro-benchmarks,
#          the 1B bench at batch 1 and 16, the decode-step profile;
#   GPU 1: the FP8 / INT4 GEMV micro-benchmark, then 8B-shape bf16 / fp8 / int4 batch-1 decode;
#   both:  the 8B TP=2 bench (with --debug: a failing rank prints its traceback).
#
#   run(command="bash benchmarks/gpu_validate.sh", kind="nvidia-h100-x2", carry=[".whl"])
#
# Every job has its own timeout and log under $OUT; a short summary prints last.
set -u
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/pip.log" 2>&1 || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export TORCHINDUCTOR_CACHE_DIR=/tmp/adc/i TRITON_CACHE_DIR=/tmp/adc/t
nvidia-smi --query-gpu=index,name --format=csv,noheader
T=${BUDGET_S:-575}
job() {  # job NAME TIMEOUT COMMAND...: log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$((T - SECONDS - 15)); (( limit > left )) && limit=$left
  (( limit < 20 )) && { echo "$name SKIPPED"; return; }
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - t0))s"
}
B1=(random:llama-3.2-1b --recipe h100 --input-len 128 --output-len 256 --no-baselines)
( export CUDA_VISIBLE_DEVICES=0 AUTODEPLOY_CACHE=/tmp/adc0
  job tests 170 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_cached_attention_rope.py \
    tests/gpu/test_gated_linear.py tests/gpu/test_compile_cuda_graphs.py tests/gpu/test_triton_linear.py
  job attn_bench 45 python3 benchmarks/decode_attention_bench.py
  job gated_bench 60 python3 benchmarks/gated_linear_bench.py --models 1b --no-norm
  job bench_1b 150 python3 -m autodeploy bench "${B1[@]}" --batch-sizes 1,16 --json "$OUT/bench_1b.json"
  job profile 80 python3 benchmarks/profile_decode.py --batch 1 --steps 50 ) &
( export CUDA_VISIBLE_DEVICES=1 AUTODEPLOY_CACHE=/tmp/adc1
  job qtests 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv.py
  job qgemv_bench 75 python3 benchmarks/quant_gemv_bench.py --rows 1 --budget-s 50
  job quant 330 python3 benchmarks/quant_gpu.py --variants bf16,fp8,int4 --budget-s 320 --timeout-s 110 \
    --json "$OUT/quant.json" ) &
wait
AUTODEPLOY_CACHE=/tmp/adc0 job tp2 200 python3 -m autodeploy bench random:llama-3.1-8b --recipe h100 --batch-sizes 1 \
  --input-len 128 --output-len 256 --no-baselines --set runtime.max_batch_size=8 --set runtime.max_seq_len=1024 \
  --set runtime.max_num_tokens=1024 --set "runtime.cuda_graph_batch_sizes=[1,2,4,8]" --world-size 2 --debug \
  --json "$OUT/tp2.json"
echo "=== tests"; tail -n 4 "$OUT/tests.log" "$OUT/qtests.log"
echo "=== 1b"; grep -E "fixed|optimize" "$OUT/bench_1b.log" | tail -4
echo "=== profile"; grep -E "engine step|host" "$OUT/profile.log"
echo "=== quant"; tail -n 5 "$OUT/quant.log"
echo "=== tp2"; grep -E "fixed|rank|Error|error" "$OUT/tp2.log" | tail -6
