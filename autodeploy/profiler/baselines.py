"""transformers baselines on the same random weights, in the same run as autodeploy's figures.

    eager    model.generate(...)                                  (dynamic cache)
    static   model.generate(..., cache_implementation="static")  (transformers compiles the decode step)

Each is warmed up once at the measured shape (static compiles there), then timed: TTFT from a
one-token generate, the full generate for the rest; greedy, every request producing exactly
output_len tokens.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from autodeploy.profiler.harness import PeakMemory, random_prompts

MODES = ("eager", "static")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate(model, ids: torch.Tensor, new_tokens: int, mode: str) -> torch.Tensor:
    kw: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              attention_mask=torch.ones_like(ids), pad_token_id=0)
    if mode == "static":
        kw["cache_implementation"] = "static"
    return model.generate(ids, **kw)


@torch.inference_mode()
def hf_workload(model, mode: str, batch_size: int, input_len: int, output_len: int, vocab: int,
                seed: int = 0) -> dict[str, Any]:
    """Time one baseline on the same prompts as harness.fixed_workload(seed=seed)."""
    if mode not in MODES:
        raise ValueError(f"unknown baseline {mode!r} (one of {', '.join(MODES)})")
    device = next(model.parameters()).device
    ids = torch.tensor(random_prompts(batch_size, input_len, vocab, seed), device=device)
    _generate(model, ids, output_len, mode)  # warm-up (static: compiles)
    _sync(device)
    t0 = time.perf_counter()
    _generate(model, ids, 1, mode)
    _sync(device)
    ttft = time.perf_counter() - t0
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        out = _generate(model, ids, output_len, mode)
        _sync(device)
        wall = time.perf_counter() - t0
    produced = out.shape[1] - input_len
    tpot = (wall - ttft) / (produced - 1) if produced > 1 else None
    return {
        "mode": mode,
        "wall_s": wall,
        "output_tokens": produced * batch_size,
        "ttft_ms": ttft * 1e3,
        "tpot_ms": tpot * 1e3 if tpot is not None else None,
        "tokens_per_s_per_seq": 1 / tpot if tpot else None,
        "tokens_per_s": produced * batch_size / wall,
        "peak_memory_gb": mem.gb,
    }


def load_hf_model(src, recipe, device: torch.device | str):
    """The transformers model with the random (seeded) or checkpoint weights autodeploy loaded."""
    from autodeploy.models.factory import materialize_model

    model = materialize_model(src, recipe, device)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model
