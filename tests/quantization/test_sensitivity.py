"""Sensitivity planning: per-layer errors, a plan within the budget, saved / reused, and --quant-budget."""

from __future__ import annotations

import json

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.models.source import resolve_source
from autodeploy.quantization import sensitivity
from tests.helpers.tiny_models import save_tiny
from tests.helpers.transform_check import run_transforms
from tests.quantization.models import meta_graph, quant_recipe

INT4 = torch.ops.autodeploy.int4_wo_linear.default
TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))


def _count(gm, op):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is op)


def _plan(tmp_path, budget=None, plan_file=None):
    d = save_tiny("llama", tmp_path / "tiny")
    gm = meta_graph("llama")
    plan_cfg = {"save_path": str(tmp_path / "plan.json")}
    plan_cfg |= {"budget": budget} if budget is not None else {"plan_file": plan_file}
    recipe = quant_recipe(quantize_int4_weight_only={"group_size": 32}, plan_quantization=plan_cfg)
    infos = run_transforms(gm, ["cleanup_export", "plan_quantization", "quantize_int4_weight_only"], recipe=recipe,
                           source=resolve_source(str(d)), calibration_tokens=TOKENS)
    return gm, infos


def test_errors_choose_and_budget():
    errs = [sensitivity.LayerError(n, "int4_g32", e) for n, e in [("a", 0.004), ("b", 0.001), ("c", 0.02), ("d", 0.002)]]
    assert sensitivity.choose(errs, 0.01) == ["c"]  # 0.007 left
    assert sensitivity.choose(errs, 0.005) == ["c", "a"]  # 0.003 left
    assert sensitivity.choose(errs, 1.0) == []
    assert errs[2].sqnr_db == pytest.approx(16.99, abs=0.01)


def test_plan_keeps_the_most_sensitive_layers(tmp_path):
    # measure everything first (a huge budget keeps nothing), then ask for half of the summed error
    _, infos = _plan(tmp_path, budget=1e9)
    full = json.loads((tmp_path / "plan.json").read_text())
    assert full["keep"] == [] and len(full["layers"]) == 14 and infos["quantize_int4_weight_only"].matches == 14
    total = sum(r["error"] for r in full["layers"].values())
    gm, infos = _plan(tmp_path, budget=total / 2)
    plan = json.loads((tmp_path / "plan.json").read_text())
    worst = sorted(plan["layers"], key=lambda n: -plan["layers"][n]["error"])
    keep = plan["keep"]
    assert 0 < len(keep) < 14 and set(keep) == set(worst[: len(keep)])
    assert plan["estimated_error"] <= total / 2
    assert plan["measured_error"] < full["measured_error"]  # keeping layers did lower the real error
    info = infos["quantize_int4_weight_only"]
    assert info.matches == 14 - len(keep) and info.details["gemms"] == _count(gm, INT4)
    assert not set(keep) & set(info.details["layers"])
    kept_weights = {f"model.{n}.weight" for n in keep}
    assert kept_weights <= {n for n, _ in gm.named_parameters()}  # kept layers hold their original weight


def test_saved_plan_is_applied_without_measuring(tmp_path):
    saved = tmp_path / "given.json"
    saved.write_text(json.dumps({"keep": ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]}))
    gm, infos = _plan(tmp_path, plan_file=str(saved))
    assert infos["plan_quantization"].matches == 2
    assert infos["quantize_int4_weight_only"].matches == 12
    assert _count(gm, INT4) == 7  # layer 0: q/k/v, o, gate/up (down kept); layer 1: k/v (q kept), o, gate/up, down


def test_budget_needs_a_value():
    from autodeploy.errors import RecipeError

    with pytest.raises(RecipeError, match="budget"):
        quant_recipe(plan_quantization={})


def test_cli_quant_budget_prints_and_saves_the_plan(tmp_path):
    from typer.testing import CliRunner

    from autodeploy.cli.main import app

    d = save_tiny("llama", tmp_path / "tiny")
    token_ids = json.dumps(TOKENS.tolist())
    args = ["optimize", str(d), "--quant-budget", "0.0001",
            "--set", "transforms.quantize_int8_weight_only.enabled=true",
            "--set", f"transforms.plan_quantization.calibration.token_ids={token_ids}",
            "--set", f"transforms.plan_quantization.save_path={tmp_path / 'cli_plan.json'}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Quantization plan" in result.output and "cli_plan.json" in result.output
    plan = json.loads((tmp_path / "cli_plan.json").read_text())
    assert plan["budget"] == 0.0001 and len(plan["layers"]) == 14
