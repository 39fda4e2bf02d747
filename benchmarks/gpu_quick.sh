#!/usr/bin/env bash
# A short 2-GPU device call: TP=2 on a tiny Llama-3 config with --debug (a failing rank's traceback),
# then the quantized GEMV tests + micro-benchmark on GPU 0 and the 1B INT4 / FP8 decode on GPU 1.
#   run(command="bash benchmarks/gpu_quick.sh", kind="nvidia-h100-x2", carry=[".whl"])
set -u
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT/logs"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  > "$OUT/logs/pip.log" 2>&1 || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export TORCHINDUCTOR_CACHE_DIR=/tmp/adc/i TRITON_CACHE_DIR=/tmp/adc/t
mkdir -p /tmp/tiny3 && cat > /tmp/tiny3/config.json <<'JSON'
{"model_type":"llama","architectures":["LlamaForCausalLM"],"vocab_size":512,"hidden_size":256,"intermediate_size":512,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":64,"max_position_embeddings":4096,"rms_norm_eps":1e-5,"tie_word_embeddings":false,"rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":2048},"bos_token_id":1,"eos_token_id":2}
JSON
job() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name rc=$? $((SECONDS - t0))s"; }
AUTODEPLOY_CACHE=/tmp/adc0 job tp2tiny 100 python3 -m autodeploy bench random:/tmp/tiny3 --recipe h100 --batch-sizes 1 \
  --input-len 16 --output-len 16 --no-baselines --set runtime.max_batch_size=4 --set runtime.max_seq_len=256 \
  --set runtime.max_num_tokens=256 --set "runtime.cuda_graph_batch_sizes=[1,2,4]" --world-size 2 --debug
( export CUDA_VISIBLE_DEVICES=0 AUTODEPLOY_CACHE=/tmp/adc0
  job qtests 70 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quant_gemv.py tests/gpu/test_gated_linear.py -x
  job qgemv_bench 80 python3 benchmarks/quant_gemv_bench.py --rows 1 --budget-s 45 ) &
( export CUDA_VISIBLE_DEVICES=1 AUTODEPLOY_CACHE=/tmp/adc1
  job quant1b 150 python3 benchmarks/quant_gpu.py --model random:llama-3.2-1b --variants int4,fp8 --budget-s 140 \
    --timeout-s 70 --json "$OUT/quant1b.json" ) &
wait
cp /tmp/adc1/autotune.json "$OUT/logs/autotune_gpu1.json" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
tar xzf "$OUT/logs.tgz" -O logs/tp2tiny.log | grep -v "Warning\|warn\|env = " | tail -45
tar xzf "$OUT/logs.tgz" -O logs/qtests.log | tail -4
tar xzf "$OUT/logs.tgz" -O logs/qgemv_bench.log | tail -22
tar xzf "$OUT/logs.tgz" -O logs/quant1b.log | tail -5
