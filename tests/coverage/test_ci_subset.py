"""CI subset: 14 architectures end to end (export, canonicalization, KV-cache runtime) with greedy
tokens equal to transformers' generate; about a minute on one core."""

from __future__ import annotations

from autodeploy.coverage.archs import causal_lm_archs
from autodeploy.coverage.runner import run_archs

# GQA / MHA / MLA attention, sliding windows, softcaps, q/k norms, sinks, LayerNorm and RMSNorm,
# gated and plain MLPs, three MoE routings
CI_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox",
            "starcoder2", "mixtral", "deepseek_v3", "gpt_oss"]


def test_ci_subset_passes_on_the_kv_cache_runtime():
    results = run_archs(causal_lm_archs(CI_ARCHS), jobs=1, timeout=120)
    failed = {r.arch: f"{r.status}: {r.reason}" for r in results if r.status != "pass"}
    assert not failed, failed
    uncached = {r.arch: r.notes for r in results if r.path != "kv-cache"}
    assert not uncached, uncached
    for r in results:
        assert r.matches["attention"] >= 2, (r.arch, r.matches)  # every layer's attention canonical
