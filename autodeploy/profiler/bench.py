"""`autodeploy bench`: optimize once, run the workloads, then the transformers baselines, all in one run.

    measure copy bandwidth ─▶ optimize (export … compile, CUDA graphs captured: optimize_s)
      ─▶ fixed workloads (b in batch_sizes) ─▶ serving run ─▶ free the runtime
      ─▶ baselines on the same random weights and prompts ─▶ ratios, % of roofline

Everything that can fail alone (a baseline, the serving run) is recorded with its error and the
rest still runs.
"""

from __future__ import annotations

import gc
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from autodeploy import progress
from autodeploy.profiler import baselines as hf
from autodeploy.profiler.harness import fixed_workload, serve_workload
from autodeploy.profiler.roofline import Roofline, copy_bandwidth, kv_bytes_per_token, mean_decode_context, roofline_for

log = logging.getLogger(__name__)
GiB = 1024**3


@dataclass
class BenchConfig:
    source: str
    recipe: str = "h100"
    overrides: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    input_len: int = 128
    output_len: int = 256
    serve_requests: int = 0
    rate: float = math.inf
    serve_input_len: int | None = None
    serve_output_len: int | None = None
    baselines: list[str] = field(default_factory=lambda: ["eager", "static"])
    autotune: bool = True
    warmup: bool = True
    seed: int = 0


def _err(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:300]


def _kv_budget_gb(cfg: BenchConfig, src, rec) -> float:
    """Enough KV pool for the largest workload (x1.25), so the pool does not take the whole card."""
    from autodeploy.models.factory import torch_dtype

    per_token = kv_bytes_per_token(None, src.config, torch_dtype(rec.runtime.dtype))
    seqs = max(max(cfg.batch_sizes, default=1), min(cfg.serve_requests, rec.runtime.max_batch_size))
    longest = max(cfg.input_len + cfg.output_len,
                  (cfg.serve_input_len or cfg.input_len) + (cfg.serve_output_len or cfg.output_len))
    # one page of slack per sequence (partial last page) plus the CUDA-graph padding page
    tokens = seqs * (longest + rec.runtime.kv_page_size) + rec.runtime.kv_page_size
    return max(0.0625, tokens * per_token * 1.25 / GiB)


def build_runtime(source: str, recipe: str, overrides: list[str]):
    """optimize() plus the paged model, compiled and captured: the runtime ready to serve."""
    from autodeploy.api import optimize
    from autodeploy.runtime.compile import compile_model
    from autodeploy.runtime.runtime import build_paged_model

    rt = optimize(source, recipe, overrides=overrides)
    rcfg = rt.recipe.runtime
    with progress.step(f"Compiling ({rcfg.compile_backend})"):
        # optimize() builds the paged model; wrapping is idempotent (already compiled: unchanged)
        rt.model = compile_model(rt.model if rt.model is not None else build_paged_model(rt.graph_module, rcfg), rcfg)
    rt.engine  # noqa: B018  (built now, not inside the first timed workload)
    return rt


def _versions() -> dict[str, str]:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "none"
    return out


def _add_roofline(w: dict[str, Any], roof: Roofline) -> None:
    ctx = mean_decode_context(w["input_len"], w["output_len"])
    w["roofline_tokens_per_s"] = roof.tokens_per_s(w["batch_size"], ctx)
    per_seq = w.get("tokens_per_s_per_seq")
    w["pct_roofline"] = 100 * w["batch_size"] * per_seq / w["roofline_tokens_per_s"] if per_seq else None


def run_bench(cfg: BenchConfig) -> dict[str, Any] | None:
    from autodeploy.api import prepare
    from autodeploy.models.factory import torch_dtype

    overrides = list(cfg.overrides)
    if not cfg.autotune:
        overrides.append("transforms.select_backends.autotune=false")
    src, rec = prepare(cfg.source, cfg.recipe, dict(_split(o) for o in overrides))
    from autodeploy.distributed.launch import follow_if_worker, setup_ranks

    setup_ranks(rec)  # sharded: the process group, and this rank's device for everything below
    if rec.runtime.kv_memory_gb is None and rec.runtime.kv_num_pages is None:
        overrides.append(f"runtime.kv_memory_gb={_kv_budget_gb(cfg, src, rec):.4f}")
    device = torch.device(rec.runtime.device)
    dtype = torch_dtype(rec.runtime.dtype)
    vocab = src.config.get_text_config().vocab_size

    result: dict[str, Any] = {
        "version": 1,
        "source": cfg.source,
        "recipe": rec.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": rec.runtime.dtype,
        "compile_backend": rec.runtime.compile_backend,
        "autotune": cfg.autotune,
        "overrides": overrides,
        **_versions(),
    }
    with progress.step(f"Measuring copy bandwidth on {device}"):
        bandwidth = copy_bandwidth(device)

    t0 = time.perf_counter()
    rt = build_runtime(cfg.source, cfg.recipe, overrides)
    if follow_if_worker(rt):  # a rank other than 0: run rank 0's steps; rank 0 measures and reports
        return None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result["optimize_s"] = time.perf_counter() - t0
    model = rt.model
    result["optimize_timings"] = dict(rt.timings, capture_s=getattr(model, "capture_seconds", 0.0),
                                     capture_breakdown=getattr(model, "capture_breakdown", {}))
    result["cuda_graph_buckets"] = sorted(getattr(model, "graphs", {}) or {})
    roof = roofline_for(rt.graph_module, src.config, device, dtype, bandwidth)
    result["roofline"] = roof.as_dict()
    result["select_backends"] = next((i.details for i in rt.report if i.name == "select_backends" and not i.skipped), None)

    workloads: list[dict[str, Any]] = []
    for b in cfg.batch_sizes:
        with progress.step(f"Workload: batch {b}, {cfg.input_len} in / {cfg.output_len} out"):
            try:
                w = fixed_workload(rt, b, cfg.input_len, cfg.output_len, vocab, cfg.seed, cfg.warmup)
                _add_roofline(w, roof)
            except Exception as e:  # noqa: BLE001 (fail soft: the other workloads still run)
                log.exception("workload batch %d failed", b)
                w = {"name": f"fixed b={b} in={cfg.input_len} out={cfg.output_len}", "kind": "fixed",
                     "batch_size": b, "input_len": cfg.input_len, "output_len": cfg.output_len, "error": _err(e)}
        workloads.append(w)
    if cfg.serve_requests > 0:
        s_in, s_out = cfg.serve_input_len or cfg.input_len, cfg.serve_output_len or cfg.output_len
        with progress.step(f"Serving: {cfg.serve_requests} requests, rate {cfg.rate:g}/s"):
            try:
                workloads.append(serve_workload(rt, cfg.serve_requests, cfg.rate, s_in, s_out, vocab, cfg.seed))
            except Exception as e:  # noqa: BLE001
                log.exception("serving run failed")
                workloads.append({"name": f"serve n={cfg.serve_requests}", "kind": "serve", "error": _err(e)})
    result["workloads"] = workloads
    result["engine_metrics"] = _safe(lambda: rt.metrics())

    del rt, model
    torch._dynamo.reset()  # compiled artifacts may hold the runtime's weights alive
    _free(device)
    if cfg.baselines:
        _run_baselines(cfg, src, rec, device, vocab, workloads, roof)
    return result


def _run_baselines(cfg, src, rec, device, vocab, workloads, roof) -> None:
    fixed = [w for w in workloads if w.get("kind") == "fixed"]
    with progress.step("Loading the transformers model for baselines"):
        try:
            model = hf.load_hf_model(src, rec, device)
        except Exception as e:  # noqa: BLE001
            for w in fixed:
                w["baselines"] = {m: {"error": _err(e)} for m in cfg.baselines}
            return
    for w in fixed:
        w["baselines"] = {}
        for mode in cfg.baselines:
            with progress.step(f"Baseline {mode}: batch {w['batch_size']}"):
                try:
                    base = hf.hf_workload(model, mode, w["batch_size"], w["input_len"], w["output_len"], vocab, cfg.seed)
                    if base.get("tokens_per_s_per_seq"):
                        ctx = mean_decode_context(w["input_len"], w["output_len"])
                        base["pct_roofline"] = 100 * w["batch_size"] * base["tokens_per_s_per_seq"] / roof.tokens_per_s(
                            w["batch_size"], ctx)
                    if w.get("tokens_per_s") and base.get("tokens_per_s"):
                        base["speedup"] = w["tokens_per_s"] / base["tokens_per_s"]  # ours over theirs
                except Exception as e:  # noqa: BLE001
                    log.exception("baseline %s failed", mode)
                    base = {"mode": mode, "error": _err(e)}
            w["baselines"][mode] = base
            torch._dynamo.reset()  # the static baseline's compiled graphs are per shape
    del model
    _free(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _safe(fn) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return {"error": _err(e)}


def _split(item: str) -> tuple[str, Any]:
    from autodeploy.recipe import parse_override

    return parse_override(item)
