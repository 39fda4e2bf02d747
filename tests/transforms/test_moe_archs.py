"""Whole tiny MoE models through `autodeploy.optimize(dir, "cpu")`: one autodeploy.moe per MoE layer,
no expert dispatch left, logits equal to eager transformers; and fuse_gemms on dense models."""

from __future__ import annotations

import pytest
import torch

import autodeploy
import autodeploy.ops  # noqa: F401  (registers the canonical ops)
from autodeploy.graph import aten, nodes_of
from autodeploy.patterns.moe import grouped_mm_ops
from tests.helpers.tiny_models import save_tiny
from tests.helpers.tolerances import assert_close_relative

MOE = torch.ops.autodeploy.moe
DISPATCH = (aten.bmm, aten._grouped_mm, aten.histc, aten.sort, aten.argsort, aten.index_add, aten.index_add_,
            aten.index_put, aten.index_put_, aten.repeat_interleave, aten.topk) + grouped_mm_ops()
SHAPES = [(1, 7), (3, 4)]  # (batch, seq): two shapes through the dynamic dims
# The logits are compared on the uncached graph: the KV cache is another transform's business.
NO_CACHE = {"transforms.insert_kv_cache.enabled": False}


def _moe_layers(config) -> int:
    n = config.num_hidden_layers
    if config.model_type == "deepseek_v3":
        return n - config.first_k_dense_replace  # the first layers keep a dense MLP
    if config.model_type in ("qwen2_moe", "qwen3_moe"):
        step, dense = config.decoder_sparse_step, set(config.mlp_only_layers)
        return sum(1 for i in range(n) if i not in dense and (i + 1) % step == 0)
    return n


def _eager(directory):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, experts_implementation="batched_mm").eval()


def _check_logits(rt, eager) -> None:
    gen = torch.Generator().manual_seed(1)
    for b, s in SHAPES:
        ids = torch.randint(0, eager.config.vocab_size, (b, s), generator=gen)
        pos = torch.arange(s).expand(b, s)
        with torch.no_grad():
            expected = eager(input_ids=ids, position_ids=pos).logits
        assert_close_relative(rt.forward(ids, pos), expected)


# batched_mm is the CPU recipe's export. grouped_mm is the GPU recipes'; on the CPU its graph only
# runs because match_moe removes it. It is checked here on the two expert layouts ([E, 2f, h] and
# GPT-OSS's transposed, interleaved, biased one); every arch is checked on both paths block by
# block in test_match_moe.py (whole-model exports dominate this file's time).
CASES = [(a, "batched_mm") for a in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss")]
CASES += [("mixtral", "grouped_mm"), ("gpt_oss", "grouped_mm")]


@pytest.mark.parametrize("arch,impl", CASES)
def test_moe_arch(arch, impl, tmp_path):
    save_tiny(arch, tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", overrides=NO_CACHE | {"model.experts_implementation": impl})
    gm = rt.graph_module
    info = next(i for i in rt.report if i.name == "match_moe")
    layers = _moe_layers(rt.hf_config)
    assert len(nodes_of(gm, MOE)) == layers and info.matches == layers and info.warning is None
    left = [n.format_node() for n in nodes_of(gm, DISPATCH)]
    assert not left, f"expert dispatch left after match_moe: {left}"
    _check_logits(rt, _eager(tmp_path))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fuse_gemms_arch(arch, tmp_path):
    save_tiny(arch, tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", overrides=NO_CACHE)
    info = next(i for i in rt.report if i.name == "fuse_gemms")
    layers = rt.hf_config.num_hidden_layers
    assert info.matches == 2 * layers  # q/k/v and gate/up in every layer
    # per layer qkv, o, gate_up, down (7 -> 4), plus the lm_head
    assert len(nodes_of(rt.graph_module, aten.linear)) == 4 * layers + 1
    _check_logits(rt, _eager(tmp_path))
