"""Quantized graphs through the whole CPU pipeline (KV cache, paged runtime): generate() gives the
greedy tokens of the same quantized model run without the cache."""

from __future__ import annotations

import pytest
import torch

import autodeploy
from autodeploy.runtime.sampling import SamplingParams
from tests.helpers.tiny_models import save_tiny

QUANT = {
    "int4": {"transforms.quantize_int4_weight_only.enabled": True, "transforms.quantize_int4_weight_only.group_size": 32},
    "fp8": {"transforms.quantize_fp8.enabled": True},
    "int8_moe": {"transforms.quantize_int8_weight_only.enabled": True},
}


def _greedy_uncached(rt, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        logits = rt.forward(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("quant", list(QUANT))
def test_generate_matches_the_uncached_quantized_graph(tmp_path, quant):
    arch = "qwen3_moe" if quant == "int8_moe" else "llama"
    d = save_tiny(arch, tmp_path / arch)
    cached = autodeploy.optimize(str(d), "cpu", overrides=QUANT[quant])
    uncached = autodeploy.optimize(str(d), "cpu", overrides=QUANT[quant] | {"transforms.insert_kv_cache.enabled": False})
    assert any(i.name.startswith("quantize_") and i.matches for i in cached.report)
    prompts = [[5, 17, 33, 2, 9], [100, 3, 7]]
    outs = cached.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert [o.token_ids for o in outs] == [_greedy_uncached(uncached, p, 8) for p in prompts]
