"""The short table bench_gpu.sh prints last: every bench JSON, the parity result and the test tally.

    python3 benchmarks/summarize.py $OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(x, fmt="{:.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def main(out_dir: str) -> int:
    out = Path(out_dir)
    print(f"{'run / workload':44s} {'tok/s':>9s} {'tok/s/seq':>9s} {'TPOT ms':>8s} {'TTFT ms':>8s} {'%roof':>6s} "
          f"{'eager x':>8s} {'static x':>8s} {'peak GB':>7s}")
    for path in sorted(out.glob("bench_*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path.name}: unreadable ({e})")
            continue
        roof = r.get("roofline") or {}
        print(f"[{path.stem}] {r.get('source')} optimize {_f(r.get('optimize_s'))} s "
              f"(capture {_f((r.get('optimize_timings') or {}).get('capture_s'))} s), copy "
              f"{_f(roof.get('bandwidth_gb_s'), '{:.0f}')} GB/s, graphs {r.get('cuda_graph_buckets')}")
        for w in r.get("workloads", []):
            if w.get("error"):
                print(f"  {w.get('name', '?'):42s} FAILED {w['error']}")
                continue
            b = w.get("baselines") or {}

            def ratio(m):
                e = b.get(m) or {}
                return "fail" if e.get("error") else _f(e.get("speedup"), "{:.2f}")

            tps = w.get("tokens_per_s")
            extra = ""
            if w.get("kind") == "serve":
                extra = f" completed {w.get('completed')}/{w.get('num_requests')}"
            print(f"  {w['name']:42s} {_f(tps):>9s} {_f(w.get('tokens_per_s_per_seq')):>9s} "
                  f"{_f(w.get('tpot_ms'), '{:.3f}'):>8s} {_f(w.get('ttft_ms')):>8s} {_f(w.get('pct_roofline')):>6s} "
                  f"{ratio('eager'):>8s} {ratio('static'):>8s} {_f(w.get('peak_memory_gb'), '{:.2f}'):>7s}{extra}")
            for m, e in b.items():
                if not e.get("error"):
                    print(f"    {'transformers ' + m:40s} {_f(e.get('tokens_per_s')):>9s} "
                          f"{_f(e.get('tokens_per_s_per_seq')):>9s} {_f(e.get('tpot_ms'), '{:.3f}'):>8s} "
                          f"{_f(e.get('ttft_ms')):>8s} {_f(e.get('pct_roofline')):>6s}")
                else:
                    print(f"    {'transformers ' + m:40s} FAILED {e['error']}")
    for path in sorted(out.glob("tp*.json")):  # bench --world-size runs (gpu_stages tp1 / tp2 / tp2_nccl)
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path.name}: unreadable ({e})")
            continue
        for w in r.get("workloads", []):
            print(f"[{path.stem}] {w.get('name', '?'):38s} {_f(w.get('tokens_per_s')):>9s} tok/s  TPOT "
                  f"{_f(w.get('tpot_ms'), '{:.3f}')} ms  {_f(w.get('pct_roofline'))}% roofline  "
                  f"peak {_f(w.get('peak_memory_gb'), '{:.2f}')} GB")
    for path in sorted(out.glob("quant_8b*.json")):  # quant_gpu.py variants
        try:
            rows = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path.name}: unreadable ({e})")
            continue
        base = next((v.get("decode_tok_s") for v in rows if v.get("variant") == "bf16"), None)
        for v in rows:
            tps = v.get("decode_tok_s")
            ratio = f"{tps / base:.2f}x bf16" if tps and base else ""
            state = v.get("error") or f"{_f(tps)} tok/s  TPOT {_f(v.get('tpot_ms'), '{:.3f}')} ms  {ratio}"
            print(f"[{path.stem}] {v.get('variant', '?'):24s} {state}  decode peak "
                  f"{_f(v.get('decode_peak_gb'), '{:.2f}')} GB")
    parity = out / "parity.json"
    if parity.exists():
        for res in json.loads(parity.read_text()):
            divs = [p.get("first_divergence") for p in res.get("prompts", [])]
            gaps = [f"{p['logit_gap']:.1e}" for p in res.get("prompts", []) if "logit_gap" in p]
            print(f"parity {res['arch']:12s} {'match' if res.get('match') else 'DIFF'} first divergence {divs} "
                  f"gaps {gaps} {res.get('error', '')}")
    for log in sorted(out.glob("*.log")):
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
        print(f"log {log.name:28s} {tail[0][:100]}")
    status = out / "stages.txt"
    if status.exists():
        print(status.read_text().rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
