"""The coverage table: one row per architecture, failing rows name the stage and the reason."""

from __future__ import annotations

from autodeploy.coverage.report import from_json, markdown, summary, to_json
from autodeploy.coverage.runner import ArchResult

RESULTS = [
    ArchResult("llama", "LlamaForCausalLM", "pass", "kv-cache",
               {"attention": 2, "rope": 2, "rmsnorm": 5, "gated_mlp": 2, "moe": 0}, seconds=3.0),
    ArchResult("falcon", "FalconForCausalLM", "pass", "no-cache", {"attention": 0, "rope": 2, "moe": None},
               notes=["match_rope: x", "match_attention: 2 attention op(s) left on the HF path (2 x shapes)"]),
    ArchResult("xglm", "XGLMForCausalLM", "export", reason="FakeTensorDeviceMismatchError in model.embed_positions | cpu vs meta"),
    ArchResult("cwm", "CwmForCausalLM", "mismatch", "kv-cache", {"attention": 2},
               reason="prompt 1 step 9: token 3, transformers 7 (reference top-2 logit margin 0.2)"),
    ArchResult("bart", "BartForCausalLM", "skipped", reason="encoder-decoder: decoder half"),
]


def row(md: str, arch: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {arch} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_summary_counts():
    s = summary(RESULTS)
    assert (s["architectures"], s["run"], s["pass"], s["skipped"]) == (5, 4, 2, 1)
    assert (s["pass_kv_cache"], s["pass_no_cache"]) == (1, 1)
    assert s["fail"] == {"export": 1, "mismatch": 1}


def test_markdown_rows():
    md = markdown(RESULTS, {"transformers": "5.x"})
    header = row(md, "architecture")
    assert header == ["architecture", "class", "status", "path", "attention", "rope", "rmsnorm", "gated_mlp", "moe",
                      "reason / note"]
    assert row(md, "llama") == ["llama", "LlamaForCausalLM", "pass", "kv-cache", "2", "2", "5", "2", "0", ""]
    # the uncached pass says which pattern kept it uncached; a transform that did not run is "-"
    assert row(md, "falcon")[3:] == ["no-cache", "0", "2", "-", "-", "-",
                                     "match_attention: 2 attention op(s) left on the HF path (2 x shapes)"]
    assert "**2 of 4 pass** (1 on the KV-cache runtime, 1 on the uncached fallback)" in md


def test_failing_rows_name_stage_and_reason():
    md = markdown(RESULTS)
    xglm = md.splitlines()[[i for i, ln in enumerate(md.splitlines()) if ln.startswith("| xglm |")][0]]
    assert "| **export** | - |" in xglm
    assert "model.embed_positions \\| cpu vs meta" in xglm  # pipes escaped, the row stays one row
    assert row(md, "cwm")[2] == "**mismatch**" and "prompt 1 step 9" in row(md, "cwm")[-1]
    assert "| bart | BartForCausalLM | encoder-decoder: decoder half |" in md.split("## Skipped")[1]


def test_json_round_trip():
    back = from_json(to_json(RESULTS, {"torch": "2.x"}, 12.5))
    assert [r.as_dict() for r in back] == [r.as_dict() for r in RESULTS]
