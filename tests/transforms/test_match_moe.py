"""match_moe: synthetic MoE modules and real tiny HF MoE blocks, on both transformers experts paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers the canonical ops)
from autodeploy.graph import aten
from autodeploy.patterns.moe import grouped_mm_ops
from tests.helpers.tiny_models import tiny_config
from tests.helpers.tolerances import assert_close
from tests.helpers.transform_check import check_transform, count, export_module, run_transforms

MOE = torch.ops.autodeploy.moe
GROUPED = grouped_mm_ops()
# what must be gone after the rewrite: expert GEMMs, routing and the dispatch bookkeeping
DISPATCH = {aten.bmm: 0, aten.histc: 0, aten.sort: 0, aten.argsort: 0, aten.index_add: 0, aten.index_put_: 0,
            aten.index_put: 0, aten.scatter_: 0, aten.topk: 0, aten.repeat_interleave: 0, aten.gather: 0}
if GROUPED:
    DISPATCH[GROUPED] = 0
H, E, F_, K = 32, 4, 16, 2


def _dyn(n_inputs: int = 1):
    return tuple({0: Dim("b", min=1, max=16), 1: Dim("s", min=1, max=64)} for _ in range(n_inputs))


def _x(b=2, s=5, h=H):
    return torch.randn(b, s, h)


def _hf_x(b=2, s=5):
    return _x(b, s, 64)  # the tiny configs' hidden size


class BatchedMoe(nn.Module):
    """The batched_mm spelling written by hand: softmax router, top-k, repeat + bmm experts."""

    def __init__(self, normalize: bool, act=nn.functional.silu):
        super().__init__()
        self.normalize, self.act = normalize, act
        self.router = nn.Linear(H, E, bias=False)
        self.w_gate_up = nn.Parameter(torch.randn(E, 2 * F_, H) * 0.2)
        self.w_down = nn.Parameter(torch.randn(E, H, F_) * 0.2)

    def forward(self, hidden):
        b, s, h = hidden.shape
        x = hidden.reshape(-1, h)  # [t, h]
        logits = self.router(x)  # [t, E]
        w, ids = torch.topk(torch.softmax(logits, dim=-1), K, dim=-1)  # [t, k]
        if self.normalize:
            w = w / w.sum(dim=-1, keepdim=True)
        flat = ids.reshape(-1)  # [t*k]
        xr = x.repeat_interleave(K, dim=0)  # [t*k, h]
        gate, up = torch.bmm(self.w_gate_up[flat], xr.unsqueeze(-1)).squeeze(-1).chunk(2, dim=-1)
        y = torch.bmm(self.w_down[flat], (self.act(gate) * up).unsqueeze(-1)).squeeze(-1)  # [t*k, h]
        out = (y * w.reshape(-1).unsqueeze(-1)).view(-1, K, h).sum(dim=1)
        return out.reshape(b, s, h)


@pytest.mark.parametrize("normalize", [True, False])
def test_synthetic_batched_moe(normalize):
    gm = check_transform(
        BatchedMoe(normalize), [_x()], "match_moe",
        before={aten.bmm: 2, aten.topk: 1, aten.repeat_interleave: 1, MOE: 0},
        after=DISPATCH | {MOE: 1, aten.linear: 1},
        matches=1, second_inputs=[_x(3, 7)], dynamic_shapes=_dyn(), run_first=["cleanup_export"],
    )
    (node,) = [n for n in gm.graph.nodes if n.target is MOE.default]
    assert node.kwargs["normalize"] is normalize and node.kwargs["top_k"] == K


def test_unknown_activation_is_left_alone_with_a_warning():
    module = BatchedMoe(True, act=torch.relu).eval()
    gm = export_module(module, [_x()], _dyn())
    info = run_transforms(gm, ["cleanup_export", "match_moe"])["match_moe"]
    assert info.matches == 0 and "unknown expert activation" in info.warning
    with torch.no_grad():
        x = _x(3, 4)
        assert_close(gm(x), module(x))


def test_declared_moe_without_experts_warns():
    dense = nn.Sequential(nn.Linear(H, H), nn.SiLU())
    gm = export_module(dense, [torch.randn(4, H)])
    info = run_transforms(gm, ["match_moe"], hf_config=tiny_config("mixtral"))["match_moe"]
    assert info.matches == 0 and "declares 4 experts" in info.warning


# ---- real transformers MoE blocks --------------------------------------------------------------


def _hf_block(arch: str, impl: str) -> nn.Module:
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    classes = {"mixtral": MixtralSparseMoeBlock, "qwen2_moe": Qwen2MoeSparseMoeBlock,
               "qwen3_moe": Qwen3MoeSparseMoeBlock, "deepseek_v3": DeepseekV3MoE, "gpt_oss": GptOssMLP}
    config = tiny_config(arch)
    config._experts_implementation = impl
    if arch == "qwen3_moe":
        config.norm_topk_prob = True  # the Qwen3 checkpoints' setting; qwen2_moe keeps the unnormalized default
    block = classes[arch](config)
    with torch.no_grad():
        for p in block.parameters():  # experts are torch.empty: give every weight a value
            p.copy_(torch.randn_like(p) * 0.1)
        for name, buf in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.3)
    return HiddenOnly(block).eval()


class HiddenOnly(nn.Module):
    """GPT-OSS's block also returns its router scores, which its decoder layer drops."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, hidden):
        out = self.block(hidden)
        return out[0] if isinstance(out, tuple) else out


SHARED_LINEARS = {"mixtral": 1, "qwen2_moe": 5, "qwen3_moe": 1, "deepseek_v3": 4, "gpt_oss": 1}  # router + shared experts


@pytest.mark.parametrize("impl", ["batched_mm", "grouped_mm"])
@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_hf_moe_block(arch, impl):
    block = _hf_block(arch, impl)
    expert_gemm = {aten.bmm: 2} if impl == "batched_mm" else {aten.histc: 1, aten.sort: 1}
    gm = check_transform(
        block, [_hf_x()], "match_moe",
        before=expert_gemm | {MOE: 0},
        after=DISPATCH | {MOE: 1, aten.linear: SHARED_LINEARS[arch]},
        matches=1, second_inputs=[_hf_x(3, 7)], dynamic_shapes=_dyn(), run_first=["cleanup_export"],
    )
    (node,) = [n for n in gm.graph.nodes if n.target is MOE.default]
    expected = {
        "mixtral": dict(normalize=True, scoring="softmax"),
        "qwen2_moe": dict(normalize=False, scoring="softmax"),
        "qwen3_moe": dict(normalize=True, scoring="softmax"),
        "deepseek_v3": dict(normalize=True, scoring="sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5),
        "gpt_oss": dict(order="topk_then_softmax", act="swiglu_clamped", interleaved_gate_up=True),
    }[arch]
    assert {k: node.kwargs[k] for k in expected} == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_grouped_mm_export_of_meta_model_is_rewritten_to_run_on_cpu(arch, dtype):
    # The GPU recipes export grouped_mm on the meta device (in bf16: aten._grouped_mm): histc on
    # int ids, which the CPU lacks. After the rewrite none of that is left and the graph runs here.
    block = _hf_block(arch, "grouped_mm").to(dtype)
    meta = _hf_block(arch, "grouped_mm").to(device="meta", dtype=dtype)
    gm = export_module(meta, [_hf_x().to("meta", dtype)], _dyn())
    assert any(n.target is aten.histc.default and n.args[0].meta["val"].dtype == torch.int32 for n in gm.graph.nodes)
    info = run_transforms(gm, ["cleanup_export", "match_moe"])["match_moe"]
    assert info.matches == 1 and info.details == {"grouped_mm": 1, "unmatched": []}
    assert all(count(gm, op) == 0 for op in DISPATCH)
    from autodeploy.models.weights import load_weights

    load_weights(gm, dict(block.state_dict()), "cpu")
    with torch.no_grad():
        x = _hf_x(3, 4).to(dtype)
        assert_close(gm(x), _batched(block)(x), dtype)


def _batched(block: HiddenOnly) -> HiddenOnly:
    """The same block on transformers' batched_mm path (grouped_mm in bf16 has no CPU kernel before torch 2.9)."""
    block.block.experts.config._experts_implementation = "batched_mm"
    return block
