#!/usr/bin/env bash
# Tensor parallelism on 2 GPUs: Llama-3.1-8B shape (random weights) batch-1 decode, TP=1 and TP=2 in
# one run on the same machine (NCCL, NVLink multicast off), then the 2-GPU tests.
#
#   benchmarks/tp_gpu.sh [stage ...]     stages: tp1 tp2 tests   (default: all three)
#
# Run from the repository root on a 2-GPU machine (device kind nvidia-h100-x2), carrying .whl:
#   run(command="bash benchmarks/tp_gpu.sh", kind="nvidia-h100-x2", carry=[".whl"])
# Each stage has its own timeout and log under $OUT; the summary (TPOT, tokens/s, speedup,
# % of roofline, per-rank parameter bytes) prints last. Goal: TP=2 >= 1.6x TP=1 tokens/s at batch 1.
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
STAGES=("$@")
[[ ${#STAGES[@]} -eq 0 ]] && STAGES=(tp1 tp2 tests)

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0  # no NVLink multicast (SHARP) on the lent machines
export AUTODEPLOY_CACHE=/tmp/adcache/autodeploy
export TORCHINDUCTOR_CACHE_DIR=/tmp/adcache/inductor
export TRITON_CACHE_DIR=/tmp/adcache/triton
mkdir -p "$AUTODEPLOY_CACHE"

{ nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
  nvidia-smi topo -m 2>/dev/null | head -4
  python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# batch 1, 128-token prompt, 256 new tokens; decode buckets up to 8 keep capture short
BENCH=(random:llama-3.1-8b --recipe h100 --batch-sizes 1 --input-len 128 --output-len 256 --no-baselines
       --set runtime.max_batch_size=8 --set runtime.max_seq_len=1024 --set runtime.max_num_tokens=1024
       --set "runtime.cuda_graph_batch_sizes=[1,2,4,8]")
BUDGET_S=${BUDGET_S:-580}
: > "$OUT/stages.txt"
stage() {  # stage NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - SECONDS - 15))
  (( limit > left )) && limit=$left
  if (( limit < 30 )); then
    printf 'stage %-6s %-10s\n' "$name" "SKIPPED" | tee -a "$OUT/stages.txt"; return
  fi
  local t0=$SECONDS
  echo "=== $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf 'stage %-6s rc=%-4s %4ds\n' "$name" "$rc" $((SECONDS - t0)) | tee -a "$OUT/stages.txt"
  tail -n 25 "$OUT/$name.log"
}

for s in "${STAGES[@]}"; do
  case $s in
    tp1) stage tp1 280 python3 -m autodeploy bench "${BENCH[@]}" --json "$OUT/tp1.json" ;;
    tp2) stage tp2 300 python3 -m autodeploy bench "${BENCH[@]}" --world-size 2 --json "$OUT/tp2.json" ;;
    tests) stage tests 200 python3 -m pytest -q -x tests/gpu/test_tp_nccl.py -p no:cacheprovider ;;
    *) echo "unknown stage $s (tp1 tp2 tests)" ;;
  esac
done

python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for tp in (1, 2):
    f = out / f"tp{tp}.json"
    if not f.exists():
        print(f"TP={tp}: no result ({f.name} missing; see tp{tp}.log)")
        continue
    r = json.loads(f.read_text())
    w = next((w for w in r["workloads"] if w.get("batch_size") == 1), r["workloads"][0])
    roof = r.get("roofline", {})
    rows[tp] = w
    print(f"TP={tp} on {r.get('device')}: {'error ' + w['error'] if w.get('error') else ''}"
          f"TPOT {w.get('tpot_ms')} ms, {w.get('tokens_per_s_per_seq')} tok/s per seq, "
          f"{w.get('pct_roofline')} % of its rank's roofline, "
          f"rank-0 weights read per step {roof.get('weight_bytes', 0) / 1e9:.2f} GB, optimize {r.get('optimize_s', 0):.0f} s")
if len(rows) == 2 and rows[1].get("tokens_per_s_per_seq") and rows[2].get("tokens_per_s_per_seq"):
    speedup = rows[2]["tokens_per_s_per_seq"] / rows[1]["tokens_per_s_per_seq"]
    print(f"TP=2 / TP=1 batch-1 decode: {speedup:.2f}x (goal >= 1.6x)")
EOF
