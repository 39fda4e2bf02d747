"""SmolLM2-135M perplexity under each quantization variant, on the committed English text (CPU).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/quant_ppl.py                  # every variant
    PYTHONPATH=$PWD .venv/bin/python benchmarks/quant_ppl.py --variants bf16,int8,int4_gptq_v_rtn

bf16 runtime, cpu recipe without the KV cache (full-sequence logits through Runtime.forward),
autodeploy/data/ppl_en.txt scored in one window. The same figures the slow tests in
tests/quantization/test_perplexity_smollm2.py check; this prints them as a markdown table.

    ... quant_ppl.py --held-out --variants bf16,fp8_gptq      # calibrate on one half of the calibration
                                                             # text, score the other half (windows of 512)

ppl_en.txt has 274 tokens: a change of the quantized weights that should not matter (a damping, a
solver) moves its FP8 figure by a point or more. --held-out scores ~1860 tokens the calibration did
not see; use it to decide between variants, and ppl_en.txt for the issue's figure.
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
    "fp8_gptq_plan_0.02": {f"{FP8}.enabled": True, f"{FP8}.method": "gptq", f"{PLAN}.enabled": True, f"{PLAN}.budget": 0.02},
    "fp8_gptq_plan_0.01": {f"{FP8}.enabled": True, f"{FP8}.method": "gptq", f"{PLAN}.enabled": True, f"{PLAN}.budget": 0.01},
    "fp8_gptq_bf16_down_proj": {f"{FP8}.enabled": True, f"{FP8}.method": "gptq", f"{FP8}.exclude": ["*lm_head", "*.down_proj"]},
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


def held_out_split() -> tuple[str, str]:
    """The calibration text's first half of paragraphs (to calibrate on) and second half (to score)."""
    from autodeploy.quantization.calibration import DEFAULT_TEXT, data_text

    paras = data_text(DEFAULT_TEXT).split("\n\n")
    return "\n\n".join(paras[: len(paras) // 2]), "\n\n".join(paras[len(paras) // 2 :])


def calibrate_on(text: str, overrides: dict) -> dict:
    """`overrides` with every enabled quantize / plan transform calibrated on `text` instead."""
    out = dict(overrides)
    for t in (INT4, FP8):
        if overrides.get(f"{t}.enabled"):
            out[f"{t}.calibration"] = {"texts": [text]}
    if overrides.get(f"{PLAN}.enabled"):
        out[f"{PLAN}.calibration"] = {"texts": [text], "num_sequences": 2, "seq_len": 64}
    return out


def measure(name: str, held_out: bool = False) -> dict:
    import autodeploy
    from autodeploy.quantization.calibration import PPL_TEXT, data_text
    from autodeploy.quantization.metrics import perplexity

    t0 = time.perf_counter()
    overrides = VARIANTS[name]
    text = data_text(PPL_TEXT)
    if held_out:
        calibration, text = held_out_split()
        overrides = calibrate_on(calibration, overrides)
    rt = autodeploy.optimize("example:smollm2", "cpu", dtype="bfloat16",
                             overrides={"transforms.insert_kv_cache.enabled": False} | overrides)
    ids = torch.tensor(rt.tokenizer(text)["input_ids"])
    plan = rt.graph_module.meta.get("quantization_plan") or {}
    return {"variant": name, "ppl": perplexity(rt.forward, ids), "tokens": ids.numel(),
            "kept_bf16": len(plan.get("keep", [])), "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--held-out", action="store_true",
                   help="calibrate on half of calibration_en.txt and score the other half (~1860 tokens) instead of "
                        "ppl_en.txt (274 tokens): a second, larger text to tell real gains from this text's noise")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        rows.append(measure(name, args.held_out))
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
