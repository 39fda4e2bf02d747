#!/usr/bin/env bash
# Named GPU stages in one device call, in groups: stages of a group run at once (each on the GPU
# named after '@'), groups run one after the other. Each stage has a time limit and a log.
#
#   bash benchmarks/gpu_stages.sh "oneshot@01:90" "quant@1 bench_1b@0" "tp2@01:200"
# (name@gpus[:seconds]; without a limit a stage may use what is left of BUDGET_S; a+b@0 runs a, then b,
#  within one limit). The one-GPU host (nvidia-h100-x1) builds ~1.7x slower than the two-GPU one: a cold
#  1B bench wants >= 200 s there, an 8B quant variant >= 150 s. On an H200 (ninth session) gpu_tests wants
#  >= 360 s (300 stopped it at 244 of ~290 tests), attn_tests >= 150 s, an A/B run pair of quant ~45 s warm.
#   run(command='bash benchmarks/gpu_stages.sh "..."', kind="nvidia-h100-x2", carry=[".whl"])
#
# Stages (see stage_* below): oneshot (2-GPU symmetric-memory all-reduce test), tp_tests (all of
# tests/gpu/test_tp_nccl.py), tp2 / tp2_oneshot / tp2_nccl (8B TP=2 batch-1 bench: push kernel, torch's
# one-shot kernel, NCCL all-reduces), tp1, bench_1b (cold caches, batch 1 and
# 16, transformers baselines), bench_1b_warm (optimize again with caches warm), quant (8B bf16 / FP8
# / INT4 via quant_gpu.py; QUANT_VARIANTS overrides), gemv (quant_gemv_bench.py), gemv_kmajor / kmajor_tests /
# quant_kmajor (the K-major INT4 GEMV: its sweep, its GPU tests, the 8B step with it), gpu_tests
# (tests/gpu on one GPU), parity. JSON results under $OUT, logs in $OUT/logs.tgz (only a few files
# come back from a device call), a summary last.
set -u
OUT=${OUT:-$PWD/out}; L=$OUT/logs; mkdir -p "$L"
SITE=${SITE:-/tmp/site}  # another SITE for a second gpu_stages.sh running at once (ab_commits.sh beside tests)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  > "$L/pip.log" 2>&1 || echo "wheel install failed"
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export TORCHINDUCTOR_CACHE_DIR=/tmp/adc/i TRITON_CACHE_DIR=/tmp/adc/t
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader | tee "$L/env.txt"
T=${BUDGET_S:-585}
R=${RECIPE:-h100}  # the recipe of every stage: RECIPE=h200 on the H200 kinds
AD="python3 -m autodeploy bench"
B1=(random:llama-3.2-1b --recipe $R --input-len 128 --output-len 256)
B8=(random:llama-3.1-8b --recipe $R --batch-sizes 1 --input-len 128 --output-len 256 --no-baselines
    --set runtime.max_batch_size=1 --set runtime.max_seq_len=512 --set runtime.max_num_tokens=512
    --set "runtime.cuda_graph_batch_sizes=[1]" --set runtime.kv_memory_gb=1)

stage_oneshot() { python3 -m pytest -q -x tests/gpu/test_tp_nccl.py; }
stage_tp2() { $AD "${B8[@]}" --world-size 2 --json "$OUT/tp2.json"; }
stage_tp2_oneshot() { $AD "${B8[@]}" --world-size 2 --set runtime.all_reduce=oneshot --json "$OUT/tp2_oneshot.json"; }
# every op on its first supported backend (Triton GEMVs with PDL instead of the cuBLAS picks the tuner times alone)
stage_tp2_notune() { $AD "${B8[@]}" --world-size 2 --no-autotune --json "$OUT/tp2_notune.json"; }
stage_tp_tests() { python3 -m pytest -q -x tests/gpu/test_tp_nccl.py; }
stage_tp_tests_moe() { python3 -m pytest -q -x tests/gpu/test_tp_nccl.py -k mixtral; }
stage_tp2_nccl() { $AD "${B8[@]}" --world-size 2 --set runtime.all_reduce=nccl --json "$OUT/tp2_nccl.json"; }
stage_tp1() { $AD "${B8[@]}" --json "$OUT/tp1.json"; }
stage_bench_1b() { $AD "${B1[@]}" --batch-sizes 1,16 --baselines eager,static --json "$OUT/bench_1b.json"; }
stage_bench_1b_fast() { $AD "${B1[@]}" --batch-sizes 1 --no-baselines --json "$OUT/bench_1b_fast.json"; }
stage_bench_1b_pdl() { AUTODEPLOY_PDL=1 $AD "${B1[@]}" --batch-sizes 1 --no-baselines --json "$OUT/bench_1b_pdl.json"; }
# the cold 1B build with stack dumps every 45 s and the compiled-kernel count every 15 s (where the time goes)
stage_bench_1b_diag() {
  ( while sleep 15; do echo "[watch ${SECONDS}s] triton kernels: $(ls /tmp/adc/t 2>/dev/null | wc -l)" >&2; done ) &
  local watch=$!
  python3 benchmarks/stack_dumps.py 45 autodeploy bench "${B1[@]}" --batch-sizes 1 --no-baselines --json "$OUT/bench_1b_diag.json"
  kill $watch; }
stage_bench_1b_nofold() { $AD "${B1[@]}" --batch-sizes 1 --no-baselines --set transforms.fuse_norm_into_gemv.enabled=false \
  --json "$OUT/bench_1b_nofold.json"; }
stage_bench_1b_nocompile() { $AD "${B1[@]}" --batch-sizes 1,16 --no-baselines --set runtime.torch_compile=false \
  --json "$OUT/bench_1b_nocompile.json"; }
stage_bench_1b_warm() { $AD "${B1[@]}" --batch-sizes 1 --output-len 32 --no-baselines --json "$OUT/bench_1b_warm.json"; }
stage_serve() { $AD "${B1[@]}" --batch-sizes 16 --serve-requests 1000 --rate inf --serve-input-len 128 \
  --serve-output-len 128 --no-baselines --json "$OUT/bench_serve.json"; }
# the serving run with Inductor compiling the graph (mixed prefill / decode steps compiled, not eager): A/B with stage serve
stage_serve_compiled() { $AD "${B1[@]}" --batch-sizes 16 --serve-requests 1000 --rate inf --serve-input-len 128 \
  --serve-output-len 128 --no-baselines --set runtime.torch_compile=true --json "$OUT/bench_serve_compiled.json"; }
stage_quant() { python3 benchmarks/quant_gpu.py --recipe $R --variants "${QUANT_VARIANTS:-bf16,fp8,int4}" --input-len 128 \
  --output-len 256 --budget-s "$1" --timeout-s "${QUANT_TIMEOUT:-150}" ${QUANT_SET:+--set "$QUANT_SET"} --json "$OUT/quant_8b.json"; }
# the same without the PDL weight prefetch (backends/triton/_common.py), for an A/B in one call
stage_quant_nopf() { AUTODEPLOY_PDL_PREFETCH=0 python3 benchmarks/quant_gpu.py --recipe $R --variants "${QUANT_VARIANTS:-bf16,fp8,int4}" \
  --input-len 128 --output-len 256 --budget-s "$1" --timeout-s "${QUANT_TIMEOUT:-150}" --json "$OUT/quant_8b_nopf.json"; }
stage_bench_1b_nopf() { AUTODEPLOY_PDL_PREFETCH=0 $AD "${B1[@]}" --batch-sizes 1 --no-baselines --json "$OUT/bench_1b_nopf.json"; }
# the FP8 GEMV alone at the 8B weights (M = 1): default, tiles and K splits merged in the launch, beside cuBLAS bf16
stage_gemv_fp8() { python3 benchmarks/quant_gemv_bench.py --rows 1 --no-norm --backends bf16 "fp8 gemv" \
  --budget-s $(( $1 - 20 )) --json "$OUT/gemv_fp8.json"; }
# the FP8 GEMV alone in the x mode each 8B site runs it with (norm-quantized, block amaxes, prologue), tiles x splits
stage_fp8_sweep() { python3 benchmarks/fp8_gemv_sweep.py --budget-s $(( $1 - 40 )) --json "$OUT/fp8_sweep.json"; }
# five engine steps of the 8B FP8 (lm_head too) and of the 1B bf16 at batch 1 as Chrome traces: the eager work and
# GPU idle time between graph replays
stage_engine_trace() { python3 benchmarks/profile_decode.py "${P8[@]}" --batch 1 --set transforms.quantize_fp8.enabled=true \
  --set "transforms.quantize_fp8.exclude=[]" --engine-trace /tmp/fp8_engine.json && gzip -c /tmp/fp8_engine.json > "$OUT/fp8_engine_trace.json.gz" \
  && python3 benchmarks/profile_decode.py --source random:llama-3.2-1b --recipe $R --batch 1 --steps 30 \
  --engine-trace /tmp/b1_engine.json && gzip -c /tmp/b1_engine.json > "$OUT/1b_engine_trace.json.gz"; }
# the decode attention's prefetch off (0) and on (1), alternating: AB_ORDER runs, each QUANT_VARIANTS (ninth session)
stage_quant_attnpf_ab() { local i=0 t0=$SECONDS pf; for pf in ${AB_ORDER:-0 1 0 1}; do i=$((i + 1))
  AUTODEPLOY_ATTN_PREFETCH=$pf python3 benchmarks/quant_gpu.py --recipe $R --variants "${QUANT_VARIANTS:-bf16,fp8_lm_head}" \
    --input-len 128 --output-len 256 --budget-s $(( $1 - (SECONDS - t0) )) --timeout-s "${QUANT_TIMEOUT:-150}" \
    --json "$OUT/quant_8b_ab${i}_attnpf${pf}.json"; done; }
# o's x quantized in the GEMV (X_MODE 1) instead of the prologue kernel, alternating with the default (ninth session)
stage_quant_xprologue_ab() { local i=0 t0=$SECONDS xp; for xp in ${AB_ORDER:-1 0 1 0}; do i=$((i + 1))
  AUTODEPLOY_FP8_X_PROLOGUE=$xp python3 benchmarks/quant_gpu.py --recipe $R --variants "${QUANT_VARIANTS:-bf16,fp8_lm_head}" \
    --input-len 128 --output-len 256 --budget-s $(( $1 - (SECONDS - t0) )) --timeout-s "${QUANT_TIMEOUT:-150}" \
    --json "$OUT/quant_8b_ab${i}_xprologue${xp}.json"; done; }
# FP8 decode without the in-launch K split of fp8_gemv.launch_config (A/B against stage quant)
stage_quant_nosplit() { AUTODEPLOY_FP8_SPLITK=0 python3 benchmarks/quant_gpu.py --recipe $R --variants fp8_lm_head \
  --input-len 128 --output-len 256 --budget-s "$1" --timeout-s "${QUANT_TIMEOUT:-150}" --json "$OUT/quant_8b_nosplit.json"; }
stage_fp8_tests() { python3 -m pytest -q -rf tests/gpu/test_quant_gemv.py tests/gpu/test_add_rmsnorm_fp8_linear.py \
  tests/gpu/test_gated_act_fp8_linear.py tests/gpu/test_quant_gpu.py; }
# the bf16 decode GEMV's tiles and in-launch K splits on the 8B weights and their TP=2 shards, beside cuBLAS
stage_linear_sweep() { python3 benchmarks/triton_linear_sweep.py --rows 1 --models 8b --tp 1 2 --kinds dot_t \
  --json "$OUT/linear_sweep.json"; }
stage_gemv() { python3 benchmarks/quant_gemv_bench.py --rows 1 --budget-s $(( $1 - 30 )) --json "$L/gemv.json"; }
# the K-major INT4 GEMV's default (bf16x2), its fp32-math kernel and neighbours on the 8B weights, beside cuBLAS bf16
stage_gemv_kmajor() { python3 benchmarks/quant_gemv_bench.py --rows 1 --no-norm --backends bf16 "int4 kmaj" \
  --budget-s $(( $1 - 20 )) --json "$OUT/gemv_kmajor.json"; }
# the same without PDL: each call's latency alone (with PDL, back-to-back calls overlap a kernel's ramp and
# tail with its neighbours', which a decode step's GEMV, between a norm and attention, mostly cannot)
stage_gemv_kmajor_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/quant_gemv_bench.py --rows 1 --no-norm --backends bf16 \
  "int4 kmaj" --budget-s $(( $1 - 20 )) --json "$OUT/gemv_kmajor_nopdl.json"; }
# Nsight Compute on the K-major INT4 GEMV at the 8B weights (Firecracker hosts only: the x2 / x4 kinds read
# counters, gVisor does not): speed of light, occupancy, warp stalls, issue slots, memory, per launch
stage_ncu_int4() { local ncu f=$OUT/ncu_int4${NCU_TAG:-}.txt; ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  [[ -n $ncu ]] || { echo "no ncu"; return 1; }
  "$ncu" --clock-control none -k regex:int4_kmajor --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section SourceCounters \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    python3 benchmarks/int4_gemv_ncu.py --calls 1 --weights ${NCU_WEIGHTS:-qkv o gate_up down lm_head} > "$f" 2>&1; local rc=$?
  grep -E "int4_kmajor|Duration|DRAM Throughput|Achieved Occupancy|Issued Warp Per|No Eligible" "$f" | head -80; return $rc; }
# the same with plain weight loads (int4_kmajor_gemv_bf16x2.load_meta: evict_first by default)
stage_ncu_int4_plain() { AUTODEPLOY_INT4_W_LOAD=none NCU_TAG=_plain stage_ncu_int4; }
# the K-major INT4 step (lm_head in INT4 too) as a Chrome trace: every kernel's duration, with PDL and without
I4=(--set transforms.quantize_int4_weight_only.enabled=true --set transforms.quantize_int4_weight_only.group_size=128
    --set "transforms.quantize_int4_weight_only.exclude=[]" --set transforms.repack_int4_kmajor.enabled=true)
stage_trace_int4() { python3 benchmarks/profile_decode.py "${P8[@]}" "${I4[@]}" --trace /tmp/int4.json \
  && gzip -c /tmp/int4.json > "$OUT/int4_trace.json.gz"; }
# the 8B FP8 step (lm_head FP8 too) at bucket 1 as a Chrome trace (earlier FP8 profiles ran bucket 2: M = 2)
stage_trace_fp8() { python3 benchmarks/profile_decode.py "${P8[@]}" --set transforms.quantize_fp8.enabled=true \
  --set "transforms.quantize_fp8.exclude=[]" --trace /tmp/fp8.json && gzip -c /tmp/fp8.json > "$OUT/fp8_trace.json.gz"; }
stage_trace_int4_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py "${P8[@]}" "${I4[@]}" --trace /tmp/int4n.json \
  && gzip -c /tmp/int4n.json > "$OUT/int4_nopdl_trace.json.gz"; }
# the eleventh session's GPU test files (the bf16x2 INT4 GEMV, the bucket of one)
stage_session11_tests() { python3 -m pytest -q -rf tests/gpu/test_int4_kmajor.py tests/gpu/test_compile_cuda_graphs.py; }
stage_kmajor_tests() { python3 -m pytest -q -x tests/gpu/test_int4_kmajor.py tests/backends/triton/test_int4_kmajor_gemv.py \
  tests/backends/triton/test_int4_kmajor_gemm.py; }
# 8B batch-1 decode: INT4 on the half-split kernels vs repacked K-major (h100 recipe + overrides, as stage quant)
stage_quant_kmajor() { python3 benchmarks/quant_gpu.py --recipe $R --variants int4,int4_kmajor --input-len 128 \
  --output-len 256 --budget-s "$1" --timeout-s 200 --json "$OUT/quant_kmajor.json"; }
P8=(--source random:llama-3.1-8b --recipe $R --batch 1 --steps 30)
stage_profile_fp8() { python3 benchmarks/profile_decode.py "${P8[@]}" --set transforms.quantize_fp8.enabled=true \
  --set "transforms.quantize_fp8.exclude=[]"; }
stage_profile_int4_kmajor() { python3 benchmarks/profile_decode.py "${P8[@]}" --set transforms.quantize_int4_weight_only.enabled=true \
  --set transforms.quantize_int4_weight_only.group_size=128 --set transforms.repack_int4_kmajor.enabled=true; }
stage_profile_int4() { python3 benchmarks/profile_decode.py "${P8[@]}" --set transforms.quantize_int4_weight_only.enabled=true \
  --set transforms.quantize_int4_weight_only.group_size=128; }
# per-kernel times of the K-major INT4 step without PDL (with it, a kernel's time includes its wait)
stage_profile_int4_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py "${P8[@]}" \
  --set transforms.quantize_int4_weight_only.enabled=true --set transforms.quantize_int4_weight_only.group_size=128 \
  --set transforms.repack_int4_kmajor.enabled=true; }
# per-kernel times without PDL (with it a kernel's time includes its wait for the previous one)
stage_profile_fp8_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py "${P8[@]}" \
  --set transforms.quantize_fp8.enabled=true --set "transforms.quantize_fp8.exclude=[]"; }
stage_profile_fp8_actfold_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py "${P8[@]}" \
  --set transforms.quantize_fp8.enabled=true --set "transforms.quantize_fp8.exclude=[]" \
  --set transforms.fuse_act_into_fp8_gemv.enabled=true; }
# 8B TP=2 under torchrun: rank 0's kernels over 5 engine steps (all-reduces include the wait for the peer), and
# the steps as a Chrome trace (GPU idle gaps); without PDL, with it
stage_profile_tp2_nopdl() { AUTODEPLOY_PDL=0 python3 -m torch.distributed.run --nproc-per-node 2 benchmarks/profile_decode.py "${P8[@]}" \
  --trace /tmp/tp2_nopdl.json && gzip -c /tmp/tp2_nopdl.json > "$OUT/tp2_nopdl_trace.json.gz"; }
stage_profile_tp2() { python3 -m torch.distributed.run --nproc-per-node 2 benchmarks/profile_decode.py "${P8[@]}" \
  --trace /tmp/tp2.json && gzip -c /tmp/tp2.json > "$OUT/tp2_trace.json.gz"; }
stage_profile_8b_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py "${P8[@]}"; }
stage_profile_1b_nopdl() { AUTODEPLOY_PDL=0 python3 benchmarks/profile_decode.py --recipe $R --batch 1 --steps 100; }
stage_profile_1b() { python3 benchmarks/profile_decode.py --recipe $R --batch 1 --steps 100; }
stage_parity_pdl() { AUTODEPLOY_PDL=1 python3 benchmarks/greedy_parity.py --recipe $R --archs llama,qwen3,gemma2 --tokens 32 \
  --json "$OUT/parity_pdl.json"; }
# the captured-as-is path (no Inductor) with PDL: tokens against the CPU reference, then 1B batch 1
stage_parity_nocompile() { AUTODEPLOY_PDL=1 python3 benchmarks/greedy_parity.py --recipe $R --archs llama,gemma2 --tokens 32 \
  --set runtime.torch_compile=false --json "$OUT/parity_nocompile.json"; }
stage_bench_1b_pdl_nocompile() { AUTODEPLOY_PDL=1 $AD "${B1[@]}" --batch-sizes 1 --no-baselines --set runtime.torch_compile=false \
  --json "$OUT/bench_1b_pdl_nocompile.json"; }
# every op on its Triton kernel (no autotuning: the tuner times ops one at a time, where PDL's overlap never shows)
stage_bench_1b_pdl_notune() { AUTODEPLOY_PDL=1 $AD "${B1[@]}" --batch-sizes 1,16 --no-baselines --no-autotune \
  --set runtime.torch_compile=false --json "$OUT/bench_1b_pdl_notune.json"; }
# the FP8 kernel tests of tests/backends/triton compiled on the GPU (CI runs them interpreted, fp32 only)
stage_fp8_kernel_tests() { python3 -m pytest -q -rf --tb=line tests/backends/triton/test_add_rmsnorm_fp8_linear.py \
  tests/backends/triton/test_fp8_gemv.py tests/backends/triton/test_gated_act_fp8_linear.py; }
stage_gpu_tests() { python3 -m pytest -q --maxfail=15 tests/gpu --ignore=tests/gpu/test_tp_nccl.py; }
# the fused decode attention (with its prefetch programs): compiled kernel tests and the GPU file
stage_attn_tests() { timeout -s ABRT $(( $1 - 10 )) python3 -X faulthandler -m pytest -q -rf \
  tests/backends/triton/test_cached_attention_rope.py tests/gpu/test_triton_cached_attention_rope.py; }
# the tenth session's new kernels and transforms, compiled on the GPU (position tables, quantized lm_head gather)
# the eleventh session's new kernel (the bf16x2 INT4 GEMV) and the tests it changes, compiled on the GPU
stage_new_tests() { python3 -m pytest -q -rf tests/gpu/test_int4_kmajor.py tests/backends/triton/test_int4_kmajor_gemv.py \
  tests/backends/triton/test_int4_kmajor_gemm.py tests/gpu/test_quant_gpu.py; }
stage_argmax_tests() { python3 -m pytest -q -rf tests/backends/triton/test_argmax.py tests/gpu/test_sampler_argmax.py; }
stage_parity() { python3 benchmarks/greedy_parity.py --recipe $R --archs llama,qwen3,gemma2 --tokens 32 --json "$L/parity.json"; }

run_stage() {  # name gpus limit
  local name=$1 gpus=$2 limit=$3 t0=$SECONDS
  declare -F "stage_$name" > /dev/null || { echo "$name: unknown stage"; return; }
  local devs; devs=$(echo "$gpus" | sed 's/./&,/g; s/,$//')
  # a stage named twice (a repeat for noise): the earlier run's log and $name.json move aside as .1, .2, ...
  local n=1; while [[ -e $L/$name.$n.log ]]; do n=$((n + 1)); done
  [[ -e $L/$name.log ]] && mv "$L/$name.log" "$L/$name.$n.log" && { [[ -e $OUT/$name.json ]] && mv "$OUT/$name.json" "$OUT/$name.$n.json"; }
  CUDA_VISIBLE_DEVICES=$devs AUTODEPLOY_CACHE=/tmp/adc${gpus:0:1} \
    timeout --kill-after=5 "$limit" bash -c "$(declare -f); $(declare -p AD B1 B8 P8 I4 OUT L R 2>/dev/null); \
      stage_$name $limit" > "$L/$name.log" 2>&1
  echo "$name@$gpus rc=$? $((SECONDS - t0))s"
}

for group in "$@"; do
  left=$((T - SECONDS - 15))
  (( left < 20 )) && { echo "SKIPPED: $group"; continue; }
  for item in $group; do
    name=${item%@*}; spec=${item#*@}; gpus=${spec%%:*}; limit=$left
    [[ $spec == *:* ]] && limit=${spec#*:} && (( limit > left )) && limit=$left
    # a+b+c@0: a chain, one stage after the other on those GPUs, each with what the group has left
    ( t0=$SECONDS; for one in ${name//+/ }; do run_stage "$one" "$gpus" $(( limit - (SECONDS - t0) )); done ) &
  done
  wait
done
for f in /tmp/adc0/autotune.json /tmp/adc1/autotune.json; do [[ -f $f ]] && cp "$f" "$L/$(basename "$(dirname "$f")")_autotune.json"; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
python3 benchmarks/summarize.py "$OUT" 2>&1 | tail -25
for t in fp8_sweep linear_sweep oneshot tp_tests tp_tests_moe tp2 tp2_notune tp2_oneshot tp2_nccl tp1 quant quant_nopf quant_attnpf_ab quant_xprologue_ab quant_nosplit fp8_tests fp8_kernel_tests new_tests quant_kmajor gemv gemv_kmajor kmajor_tests gpu_tests attn_tests argmax_tests parity parity_pdl parity_nocompile; do
  tar xzf "$OUT/logs.tgz" -O "logs/$t.log" 2>/dev/null | grep -E "passed|failed|rror|tok/s|x bf16|TOTAL|step|match" | tail -12
done
