"""SmolLM2-135M perplexity under each quantization variant, on the committed English text (CPU).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/quant_ppl.py                  # every variant
    PYTHONPATH=$PWD .venv/bin/python benchmarks/quant_ppl.py --variants bf16,int8,int4_gptq_v_rtn

bf16 runtime, cpu recipe without the KV cache (full-sequence logits through Runtime.forward),
autodeploy/data/ppl_en.txt scored in one window. The same figures the slow tests in
tests/quantization/test_perplexity_smollm2.py check; this prints them as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

INT4 = "transforms.quantize_int4_weight_only"
PLAN = "transforms.plan_quantization"
FP8 = "transforms.quantize_fp8"
FP8_WO = {f"{FP8}.enabled": True, f"{FP8}.activation_scheme": "none"}
VARIANTS: dict[str, dict] = {
    "bf16": {},
    "int8": {"transforms.quantize_int8_weight_only.enabled": True},
    "fp8": {"transforms.quantize_fp8.enabled": True},
    "fp8_weight_only": {"transforms.quantize_fp8.enabled": True, "transforms.quantize_fp8.activation_scheme": "none"},
    "fp8_plan_0.05": {"transforms.quantize_fp8.enabled": True, f"{PLAN}.enabled": True, f"{PLAN}.budget": 0.05},
    "fp8_gptq": {f"{FP8}.enabled": True, f"{FP8}.method": "gptq"},
    "fp8_weight_only_gptq": FP8_WO | {f"{FP8}.method": "gptq"},
    "fp8_weight_only_gptq_v_rtn": FP8_WO | {f"{FP8}.method": "gptq", f"{FP8}.overrides": {"*.v_proj": {"method": "rtn"}}},
    "fp8_weight_only_gptq_plan_0.02": FP8_WO | {f"{FP8}.method": "gptq", f"{PLAN}.enabled": True, f"{PLAN}.budget": 0.02},
    "int4_rtn": {f"{INT4}.enabled": True},
    "int4_awq": {f"{INT4}.enabled": True, f"{INT4}.method": "awq"},
    "int4_awq_plan_0.15": {f"{INT4}.enabled": True, f"{INT4}.method": "awq", f"{PLAN}.enabled": True,
                           f"{PLAN}.budget": 0.15},
    "int4_gptq": {f"{INT4}.enabled": True, f"{INT4}.method": "gptq"},
    "int4_gptq_v_rtn": {f"{INT4}.enabled": True, f"{INT4}.method": "gptq", f"{INT4}.overrides": {"*.v_proj": {"method": "rtn"}}},
}


def measure(name: str) -> dict:
    import autodeploy
    from autodeploy.quantization.calibration import PPL_TEXT, data_text
    from autodeploy.quantization.metrics import perplexity

    t0 = time.perf_counter()
    rt = autodeploy.optimize("example:smollm2", "cpu", dtype="bfloat16",
                             overrides={"transforms.insert_kv_cache.enabled": False} | VARIANTS[name])
    ids = torch.tensor(rt.tokenizer(data_text(PPL_TEXT))["input_ids"])
    plan = rt.graph_module.meta.get("quantization_plan") or {}
    return {"variant": name, "ppl": perplexity(rt.forward, ids), "tokens": ids.numel(),
            "kept_bf16": len(plan.get("keep", [])), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        rows.append(measure(name))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["ppl"] for r in rows if r["variant"] == "bf16"), None)
    print("\n| variant | perplexity | vs bf16 | layers kept in bf16 |\n|---|---:|---:|---:|")
    for r in rows:
        delta = f"{100 * (r['ppl'] / base - 1):+.1f}%" if base else "-"
        print(f"| {r['variant']} | {r['ppl']:.2f} | {delta} | {r['kept_bf16']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
