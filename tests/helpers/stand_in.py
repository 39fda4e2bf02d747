"""A stand-in backend that always wins tuning: backend-selection tests of fused ops whose real
Triton twins need CUDA.

    with faster_stand_ins(monkeypatch, tmp_path, GATED) as (alt, calls):
        ... select_backends swaps every GATED site for alt[GATED]; calls["n"] counts its runs
"""

from __future__ import annotations

import contextlib

from autodeploy.profiler import autotuner
from autodeploy.profiler.candidates import register_backend, unregister_backend
from autodeploy.profiler.variants import derive_op, op_name, reference_fn

CALLS = {"n": 0}  # runs of any stand-in (derive_op defines each once per process: one shared counter)


def stand_in(base):
    """`<base>_testalt`: base's schema, its reference as the implementation, counted in CALLS."""
    def impl(*args, **kwargs):
        CALLS["n"] += 1
        return reference_fn(base)(*args, **kwargs)

    return derive_op(base, "testalt", impl)


@contextlib.contextmanager
def faster_stand_ins(monkeypatch, tmp_path, *bases):
    """Register stand_in(base) as backend "alt" of each base op, timed faster than every other
    candidate (a private autotune cache in tmp_path); yields ({base: stand-in}, CALLS)."""
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    monkeypatch.setattr(autotuner, "measure_candidate",
                        lambda cand, inputs, device, warmup=3, reps=10: 1.0 if cand.name == "alt" else 2.0)
    alts = {base: stand_in(base) for base in bases}
    for base, alt in alts.items():
        register_backend(op_name(base), "alt", alt)
    CALLS["n"] = 0
    try:
        yield alts, CALLS
    finally:
        for base in bases:
            unregister_backend(op_name(base), "alt")
