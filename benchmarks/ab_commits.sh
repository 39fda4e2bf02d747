#!/usr/bin/env bash
# An A/B of two code versions in one device call: the working tree ("new") against a commit ("base"), the same
# gpu_stages.sh group alternating (base, new, base, new: a machine's first build autotunes cold, ~10-20 us slower
# an 8B step, so neither side always goes first). The base tree is `git archive`d here, before the call, into
# bench_base/ (untracked: it travels with the working tree); run() then needs carry=[".whl"].
#
#   bash benchmarks/ab_commits.sh prepare cfed91e          # here
#   RECIPE=h200 QUANT_VARIANTS=bf16,fp8_lm_head bash benchmarks/ab_commits.sh run "quant@0:140" [base new base new]
#
# A side named otherwise runs the working tree with the environment in AB_<side> ("VAR=value ..."), e.g.
#   AB_nopf="AUTODEPLOY_ATTN_PREFETCH=0" ... run "quant@0:140" base new nopf
#
# Results: $OUT/<side><n>/ (each gpu_stages.sh run's JSON and logs.tgz), a summary of every quant row last.
set -u
cmd=${1:?prepare REV | run GROUP [ORDER...]}
if [[ $cmd == prepare ]]; then
  rev=${2:?a commit}; rm -rf bench_base && mkdir bench_base && git archive "$rev" | tar x -C bench_base
  echo "$rev" > bench_base/.ab_rev; echo "bench_base/ = $(git rev-parse --short "$rev")"; exit 0
fi
group=${2:?a gpu_stages.sh group, e.g. quant@0:140}; shift 2
order=("$@"); (( ${#order[@]} )) || order=(base new base new)
if [[ " ${order[*]} " == *" base "* ]]; then  # sides of the working tree with an environment need no base tree
  [[ -d bench_base ]] || { echo "no bench_base/: run 'prepare REV' first"; exit 1; }
  [[ -e bench_base/.whl ]] || ln -s ../.whl bench_base/.whl
fi
B=${OUT:-$PWD/out}; mkdir -p "$B"; declare -A n
for side in "${order[@]}"; do
  n[$side]=$(( ${n[$side]:-0} + 1 )); dir=$B/$side${n[$side]}
  if [[ $side == base ]]; then (cd bench_base && OUT=$dir bash benchmarks/gpu_stages.sh "$group" > "$dir.txt" 2>&1)
  elif [[ $side == new ]]; then OUT=$dir bash benchmarks/gpu_stages.sh "$group" > "$dir.txt" 2>&1
  else var=AB_$side; env ${!var:-} OUT=$dir bash benchmarks/gpu_stages.sh "$group" > "$dir.txt" 2>&1; fi
  echo "== $side${n[$side]} (base $(cat bench_base/.ab_rev 2>/dev/null || echo none))"; grep -E "rc=|x bf16|^ *(bf16|fp8|int4)" "$dir.txt" | tail -6
done
