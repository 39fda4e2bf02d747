"""autodeploy::moe reference op against a per-token loop written out here, for every routing variant."""

from __future__ import annotations

import math

import pytest
import torch

import autodeploy.backends.torch  # noqa: F401  (registers the ops)
from tests.helpers.tolerances import assert_close

T, H, F_, E = 7, 16, 8, 8


def _act(gate: float, up: float, cfg: dict) -> float:
    act = cfg.get("act", "silu")
    if act == "silu":
        return gate / (1 + math.exp(-gate)) * up
    if act == "gelu_tanh":
        inner = math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)
        return 0.5 * gate * (1 + math.tanh(inner)) * up
    if act == "gelu":
        return 0.5 * gate * (1 + math.erf(gate / math.sqrt(2))) * up
    alpha, limit = cfg.get("swiglu_alpha", 1.702), cfg.get("swiglu_limit", 7.0)
    gate, up = min(gate, limit), max(-limit, min(up, limit))
    return (up + 1) * gate / (1 + math.exp(-alpha * gate))


def _route_one(logits: list[float], bias: list[float] | None, cfg: dict) -> list[tuple[int, float]]:
    """(expert, weight) pairs for one token, spelled out the way the model cards describe routing."""
    k = cfg["top_k"]
    sigmoid = cfg.get("scoring", "softmax") == "sigmoid"

    def score(vals):
        if sigmoid:
            return [1 / (1 + math.exp(-v)) for v in vals]
        m = max(vals)
        ex = [math.exp(v - m) for v in vals]
        return [e / sum(ex) for e in ex]

    if cfg.get("order", "softmax_then_topk") == "topk_then_softmax":
        chosen = sorted(range(len(logits)), key=lambda e: -logits[e])[:k]
        pairs = list(zip(chosen, score([logits[e] for e in chosen])))
    else:
        scores = score(logits)
        choice = [s + (bias[e] if bias else 0.0) for e, s in enumerate(scores)]
        allowed = set(range(len(logits)))
        n_group = cfg.get("n_group", 1)
        if n_group > 1:
            size = len(logits) // n_group
            group_score = [sum(sorted(choice[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(n_group)]
            best = sorted(range(n_group), key=lambda g: -group_score[g])[: cfg["topk_group"]]
            allowed = {e for g in best for e in range(g * size, (g + 1) * size)}
        chosen = sorted(allowed, key=lambda e: -choice[e])[:k]
        pairs = [(e, scores[e]) for e in chosen]
    if cfg.get("normalize", False):
        total = sum(w for _, w in pairs)
        pairs = [(e, w / total) for e, w in pairs]
    scale = cfg.get("routed_scaling_factor", 1.0)
    return [(e, w * scale) for e, w in pairs]


def loop_reference(x, logits, w_gate_up, w_down, b_gate_up, b_down, bias, cfg) -> torch.Tensor:
    """Token by token, expert by expert, in float64."""
    x, w_gate_up, w_down = x.double(), w_gate_up.double(), w_down.double()
    interleaved = cfg.get("interleaved_gate_up", False)
    f = w_down.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        bias_list = bias.tolist() if bias is not None else None
        for e, weight in _route_one(logits[t].double().tolist(), bias_list, cfg):
            gate_up = w_gate_up[e] @ x[t]
            if b_gate_up is not None:
                gate_up = gate_up + b_gate_up[e].double()
            gates = gate_up[0::2] if interleaved else gate_up[:f]
            ups = gate_up[1::2] if interleaved else gate_up[f:]
            hidden = torch.tensor([_act(g, u, cfg) for g, u in zip(gates.tolist(), ups.tolist())], dtype=torch.float64)
            y = w_down[e] @ hidden
            if b_down is not None:
                y = y + b_down[e].double()
            out[t] += weight * y
    return out


VARIANTS = {
    "mixtral": dict(top_k=2, normalize=True),
    "qwen2_moe_unnormalized": dict(top_k=3),
    "qwen3_moe_normalized": dict(top_k=4, normalize=True),
    "gelu_tanh": dict(top_k=2, act="gelu_tanh"),
    "gelu": dict(top_k=2, act="gelu"),
    "gpt_oss": dict(top_k=2, order="topk_then_softmax", act="swiglu_clamped", interleaved_gate_up=True,
                    swiglu_alpha=1.702, swiglu_limit=0.5),
    "deepseek_v3": dict(top_k=2, scoring="sigmoid", normalize=True, n_group=4, topk_group=2,
                        routed_scaling_factor=2.5),
    "sigmoid_ungrouped_bias": dict(top_k=3, scoring="sigmoid"),
}
WITH_BIASES = {"gpt_oss"}
WITH_SCORE_BIAS = {"deepseek_v3", "sigmoid_ungrouped_bias"}


def _inputs(variant: str, t: int = T):
    x = torch.randn(t, H)
    logits = torch.randn(t, E) * 2
    w_gate_up = torch.randn(E, 2 * F_, H) / math.sqrt(H)
    w_down = torch.randn(E, H, F_) / math.sqrt(F_)
    b_gate_up = torch.randn(E, 2 * F_) if variant in WITH_BIASES else None
    b_down = torch.randn(E, H) if variant in WITH_BIASES else None
    score_bias = torch.randn(E) * 0.5 if variant in WITH_SCORE_BIAS else None
    return x, logits, w_gate_up, w_down, b_gate_up, b_down, score_bias


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_moe_matches_per_token_loop(variant):
    cfg = VARIANTS[variant]
    args = _inputs(variant)
    out = torch.ops.autodeploy.moe(*args, **cfg)
    assert out.shape == (T, H) and out.dtype == torch.float32
    assert_close(out, loop_reference(*args, cfg).float())


def test_group_limited_routing_only_picks_from_best_groups():
    # Group 0 holds the single best expert, but groups 1 and 2 have the better top-2 sums: the
    # best expert must be skipped, which plain top-k would not do.
    logits = torch.tensor([[5.0, -9.0, 3.0, 3.0, 2.9, 2.9, -9.0, -9.0]])
    from autodeploy.backends.torch.moe import route

    _, ids = route(logits, top_k=2, scoring="sigmoid", n_group=4, topk_group=2)
    assert sorted(ids[0].tolist()) == [2, 3]
    _, ids_plain = route(logits, top_k=2, scoring="sigmoid")
    assert 0 in ids_plain[0].tolist()


def test_score_bias_changes_selection_not_weights():
    from autodeploy.backends.torch.moe import route

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])
    weights, ids = route(logits, top_k=1, scoring="sigmoid", e_score_correction_bias=bias)
    assert ids.tolist() == [[3]]
    assert_close(weights, torch.sigmoid(torch.tensor([[-1.0]])))


def test_transposed_storage_is_the_same_op():
    # GPT-OSS stores gate_up as [E, h, 2f]; the op takes the logical [E, 2f, h] view of it.
    cfg = VARIANTS["gpt_oss"]
    x, logits, w_gate_up, w_down, b_gate_up, b_down, _ = _inputs("gpt_oss")
    stored_gu, stored_d = w_gate_up.transpose(1, 2).contiguous(), w_down.transpose(1, 2).contiguous()
    out = torch.ops.autodeploy.moe(x, logits, stored_gu.transpose(1, 2), stored_d.transpose(1, 2), b_gate_up, b_down, **cfg)
    assert_close(out, torch.ops.autodeploy.moe(x, logits, w_gate_up, w_down, b_gate_up, b_down, **cfg))


def test_bf16_and_zero_tokens():
    cfg = VARIANTS["mixtral"]
    x, logits, w_gate_up, w_down, *_ = _inputs("mixtral")
    args16 = (x.bfloat16(), logits.bfloat16(), w_gate_up.bfloat16(), w_down.bfloat16())
    out = torch.ops.autodeploy.moe(*args16, **cfg)
    assert out.dtype == torch.bfloat16
    assert_close(out, loop_reference(*args16, None, None, None, cfg).bfloat16())
    empty = torch.ops.autodeploy.moe(x[:0], logits[:0], w_gate_up, w_down, **cfg)
    assert empty.shape == (0, H)


def test_fake_and_schema():
    args = _inputs("deepseek_v3")
    torch.library.opcheck(torch.ops.autodeploy.moe.default, args, VARIANTS["deepseek_v3"],
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_config_names_the_field():
    x, logits, w_gate_up, w_down, *_ = _inputs("mixtral")
    with pytest.raises(ValueError, match="scoring"):
        torch.ops.autodeploy.moe(x, logits, w_gate_up, w_down, top_k=2, scoring="relu")
    with pytest.raises(ValueError, match="act"):
        torch.ops.autodeploy.moe(x, logits, w_gate_up, w_down, top_k=2, act="tanh")
