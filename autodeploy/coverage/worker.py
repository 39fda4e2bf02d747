"""One architecture through the whole CPU pipeline, compared with transformers; runs in a child process.

    config ─ tiny_config(model_type)
    build  ─ transformers model from the config (seeded), save_pretrained; transformers greedy
             generate on it (the reference, eos ignored)
    export / transform / load ─ autodeploy.optimize(dir, "cpu"): the stage is the pipeline step
             the exception came out of
    run    ─ rt.generate(prompts, greedy, ignore_eos), all prompts in flight together
    mismatch ─ tokens differ from the reference (first differing step and the reference's
             top-2 logit margin there, so a numerical near-tie reads as one)

`run_arch` reports each stage it enters through `on_stage` (the parent uses the last one when the
child hangs or crashes) and returns a plain dict (see runner.ArchResult).
"""

from __future__ import annotations

import logging
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

NEW_TOKENS = 16
PROMPT_LENS = (5, 11)  # two prefills of different length; 11 + 16 tokens crosses the tiny sliding window (8)
SEED = 0
MAX_PARAMS = 20_000_000  # a tiny config above this left some size field at its full default
# Runtime sizes for a tiny model (the cpu recipe's 1 GiB KV budget would be allocated per architecture).
RUNTIME_SIZES = dict(max_batch_size=4, max_seq_len=128, kv_num_pages=64)

# The pipeline functions of autodeploy.optimize, by the stage a failure inside them belongs to.
_STAGE_OF_FUNCTION = {
    "prepare": "build", "resolve_source": "build", "build_meta_model": "build", "from_config": "build",
    "export_source": "export", "export_model": "export",
    "detect_architecture": "transform", "run_pipeline": "transform",
    "materialize_state": "load", "load_weights": "load", "load_tokenizer": "load", "build_paged_model": "load",
}


class StageError(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def describe(exc: BaseException) -> str:
    """`Type: first line (file:line)` with the innermost frame, so the failing op or pattern is named.

    autodeploy's own errors already name their cause in one line: that line alone, without the
    "cannot export X:" lead of an ExportError (the row names the architecture).
    """
    from autodeploy.errors import AutoDeployError, ExportError

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if isinstance(exc, ExportError) and first.startswith("cannot export") and ": " in first:
        return first.split(": ", 1)[1][:300]
    if isinstance(exc, AutoDeployError):
        return first[:300]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {first[:300]}{where}"


def optimize_stage(exc: BaseException) -> tuple[str, str | None]:
    """The stage of an exception out of autodeploy.optimize, and the transform it came from (if any)."""
    from autodeploy.errors import ExportError

    stage, transform = "build", None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        name = frame.f_code.co_name
        if module.startswith("autodeploy.") and name in _STAGE_OF_FUNCTION:
            stage = _STAGE_OF_FUNCTION[name]
            spec = frame.f_locals.get("spec") if name == "run_pipeline" else None
            transform = getattr(spec, "name", transform)
    if isinstance(exc, ExportError):
        stage = "export"
    return stage, transform


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:
        pass


def prompts_for(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(SEED)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def build_reference(cfg, workdir: Path):
    """The transformers model (seeded random weights, fp32), saved as safetensors for optimize()."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"dtype": torch.float32}
    cls = AutoModelForCausalLM._model_mapping[type(cfg)]
    if cls._can_set_experts_implementation():
        kw["experts_implementation"] = "batched_mm"  # as the cpu recipe exports it
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(cfg, **kw).eval()
    model.save_pretrained(workdir, safe_serialization=True)
    return model


def oversized(cfg) -> str | None:
    """Why the tiny config is not tiny (a size field it did not shrink), from a meta-device build; else None."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception:  # the real build reports it, at the build stage
        return None
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    if total <= MAX_PARAMS:
        return None
    name, p = max(params.items(), key=lambda kv: kv[1].numel())
    return f"tiny config has {total / 1e6:.0f}M parameters (largest {name} {tuple(p.shape)}): a size field was not shrunk"


@torch.no_grad()
def reference_generate(model, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """transformers greedy generate: NEW_TOKENS tokens, eos never stops it; returns tokens and step logits."""
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0, eos_token_id=None,
                          pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    model.generation_config.eos_token_id = None  # generate() falls back to it when the passed config has none
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
    return out.sequences[0, len(prompt):].tolist(), [lg[0].float() for lg in out.logits]


def _margin(logits: torch.Tensor) -> float:
    top = logits.topk(2).values
    return float(top[0] - top[1])


def compare(ref: list[list[int]], ref_logits: list[list[torch.Tensor]], got: list[list[int]]) -> str | None:
    """None when every prompt's tokens equal the reference; else where the first one differs and why it may."""
    for p, (r, g) in enumerate(zip(ref, got)):
        if r == g:
            continue
        step = next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), min(len(r), len(g)))
        if step >= min(len(r), len(g)):
            return f"prompt {p}: {len(g)} tokens, transformers {len(r)}"
        margin = _margin(ref_logits[p][step])
        tie = " (a near-tie: numerics, not structure)" if margin < 1e-4 else ""
        return (f"prompt {p} step {step}: token {g[step]}, transformers {r[step]} "
                f"(reference top-2 logit margin {margin:.2g}){tie}")
    return None


def _matches(report) -> dict[str, int | None]:
    """Rewrites per canonical op, from the report of the match_* transforms (None: skipped)."""
    return {i.name.removeprefix("match_"): (None if i.skipped else i.matches)
            for i in report if i.name.startswith("match_")}


def _warnings(report) -> list[str]:
    return [f"{i.name}: {i.warning}" for i in report if i.warning and not i.skipped]


def run_arch(model_type: str, on_stage: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run one architecture; returns {"status", "path", "matches", "reason", "notes"}."""
    _quiet()
    result: dict[str, Any] = {"status": None, "path": None, "matches": {}, "reason": "", "notes": []}
    try:
        with tempfile.TemporaryDirectory(prefix=f"adcov-{model_type}-") as tmp:
            _run(model_type, Path(tmp), on_stage, result)
    except StageError as e:
        result["status"], result["reason"] = e.stage, e.reason
    return result


def _run(model_type: str, workdir: Path, on_stage, result: dict[str, Any]) -> None:
    import autodeploy
    from autodeploy.coverage.tiny_config import tiny_config
    from autodeploy.runtime.runtime import graph_has_kv_cache
    from autodeploy.runtime.sampling import SamplingParams

    on_stage("config")
    try:
        cfg = tiny_config(model_type)
    except Exception as e:
        raise StageError("config", describe(e)) from None

    on_stage("build")
    too_big = oversized(cfg)
    if too_big:
        raise StageError("config", too_big)
    try:
        model = build_reference(cfg, workdir)
    except Exception as e:
        raise StageError("build", f"transformers cannot build the tiny model: {describe(e)}") from None
    prompts = prompts_for(cfg.get_text_config().vocab_size)
    try:
        refs = [reference_generate(model, p) for p in prompts]
    except Exception as e:
        raise StageError("build", f"transformers generate fails on the tiny model: {describe(e)}") from None
    del model

    on_stage("export")
    try:
        rt = autodeploy.optimize(str(workdir), "cpu", **RUNTIME_SIZES)
    except Exception as e:
        stage, transform = optimize_stage(e)
        raise StageError(stage, (f"{transform}: " if transform else "") + describe(e)) from None
    result["matches"] = _matches(rt.report)
    result["notes"] = _warnings(rt.report)
    result["path"] = "kv-cache" if graph_has_kv_cache(rt.graph_module) else "no-cache"

    on_stage("run")
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    try:
        outs = rt.generate(prompts, params)
    except Exception as e:
        raise StageError("run", describe(e)) from None
    failed = next((o for o in outs if o.error), None)
    if failed is not None:
        raise StageError("run", failed.error)

    diff = compare([r[0] for r in refs], [r[1] for r in refs], [list(o.token_ids) for o in outs])
    if diff is not None:
        raise StageError("mismatch", diff)
    result["status"] = "pass"
