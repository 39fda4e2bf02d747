#!/usr/bin/env bash
# The issue-5 GPU run in one device call: GPU tests, 1B / 8B workloads with transformers baselines,
# the serving run, optimize time cold and warm, tiny-config GPU-vs-CPU greedy parity.
#
#   benchmarks/bench_gpu.sh [stage ...]      stages: tests 1b warm serve parity 8b   (default: all)
#
# Run from the repository root on the GPU machine, carrying .whl (see ../shared/device/README.md).
# All stages take longer than one call's 600 s, so two calls (each about 7 minutes expected):
#   run(command="bash benchmarks/bench_gpu.sh tests 1b warm", carry=[".whl"])
#   run(command="bash benchmarks/bench_gpu.sh serve parity 8b", carry=[".whl"])
# Every stage has its own timeout and log under $OUT; a failing stage never stops the others.
# Caches (autotune, Inductor, Triton) start empty in /tmp/adcache: the 1b stage's optimize time is
# cold, the warm stage's (same process-independent caches) is warm. A short table prints last.
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(tests 1b warm serve parity 8b)

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
export AUTODEPLOY_CACHE=/tmp/adcache/autodeploy
export TORCHINDUCTOR_CACHE_DIR=/tmp/adcache/inductor
export TRITON_CACHE_DIR=/tmp/adcache/triton
mkdir -p "$AUTODEPLOY_CACHE"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

: > "$OUT/stages.txt"
# The device call's own limit is 600 s: stages shrink to fit BUDGET_S, keeping 20 s for the summary.
BUDGET_S=${BUDGET_S:-570}
stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - SECONDS - 20))
  if (( left < 30 )); then
    printf 'stage %-8s %-12s %4ds\n' "$name" "SKIPPED" 0 | tee -a "$OUT/stages.txt"
    return
  fi
  (( limit > left )) && limit=$left
  local t0=$SECONDS
  echo "=== $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local what=ok; [[ $rc -eq 124 || $rc -eq 137 ]] && what=TIMEOUT; [[ $rc -ne 0 && $what == ok ]] && what="FAILED rc=$rc"
  printf 'stage %-8s %-12s %4ds\n' "$name" "$what" $((SECONDS - t0)) | tee -a "$OUT/stages.txt"
  tail -n 3 "$OUT/$name.log"
}
want() { local s; for s in "${STAGES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

AD="python3 -m autodeploy"
if want tests; then
  stage tests 240 python3 -m pytest -q -p no:cacheprovider tests/gpu
fi
if want 1b; then  # cold optimize: empty caches
  stage bench_1b 330 $AD bench random:llama-3.2-1b --recipe h100 --input-len 128 --output-len 256 \
    --batch-sizes 1,16 --baselines eager,static --json "$OUT/bench_1b.json" --plot "$OUT/bench_1b.png"
fi
if want warm; then  # the same model again: autotune / Inductor / Triton caches warm
  stage bench_1b_warm 150 $AD bench random:llama-3.2-1b --recipe h100 --input-len 128 --output-len 32 \
    --batch-sizes 1 --no-baselines --json "$OUT/bench_1b_warm.json"
fi
if want serve; then
  stage bench_serve 240 $AD bench random:llama-3.2-1b --recipe h100 --input-len 128 --output-len 256 \
    --batch-sizes 16 --serve-requests 1000 --rate inf --serve-input-len 128 --serve-output-len 128 \
    --no-baselines --json "$OUT/bench_serve.json"
fi
if want parity; then
  stage parity 200 python3 benchmarks/greedy_parity.py --archs llama,qwen3,gemma2 --tokens 32 --json "$OUT/parity.json"
fi
if want 8b; then
  stage bench_8b 420 $AD bench random:llama-3.1-8b --recipe h100 --input-len 128 --output-len 256 \
    --batch-sizes 1 --baselines eager,static --json "$OUT/bench_8b.json"
fi

echo "=== summary"
python3 benchmarks/summarize.py "$OUT"
