"""Which backend ops can replace a canonical op, in order of preference.

    triton          torch.ops.autodeploy.triton_<op> or <op>_triton (autodeploy.backends.triton), CUDA only
    <registered>    extra backends added with register_backend() (tests, plug-ins, and second Triton
                    kernels such as int4_wo_linear's "triton-dot": names "triton-*" obey triton=)
    torch           the canonical op itself: its reference implementation
    torch-compile   the reference under torch.compile (only where `compiled=True`)

The first entry is the default when autotuning is off. aten.linear is no canonical op but has the
same entry point (`linear_backends`): its Triton twin, autodeploy::triton_linear, is a GEMV kernel
for decode rows (at most LINEAR_DECODE_ROWS), and "torch" is aten.linear itself (cuBLAS).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch._ops import OpOverload

from autodeploy.profiler.variants import compiled_variant, op_name, reference_fn

log = logging.getLogger(__name__)

LINEAR = torch.ops.aten.linear.default
LINEAR_DECODE_ROWS = 16  # the most rows autodeploy::triton_linear's kernel takes (backends/triton/linear.py MAX_ROWS)


@dataclass
class BackendOp:
    name: str
    op: OpOverload
    supports: Callable[[torch.device], bool] = lambda device: True
    # given the call's arguments by schema name: can this backend run them (shape, dtype, device)?
    supports_args: Callable[[dict[str, Any]], bool] | None = None
    # every kernel it launches is one of the project's Triton kernels, which overlap the kernel before them
    # under programmatic dependent launch (cuBLAS, cuBLASLt and aten kernels do not): the autotuner's margin
    pdl: bool = False

    def can_run(self, args: dict[str, Any]) -> bool:
        if self.supports_args is None:
            return True
        try:
            return bool(self.supports_args(args))
        except Exception:  # a checker that cannot judge these arguments says no
            return False


def module_supports(op: OpOverload) -> Callable[[dict[str, Any]], bool] | None:
    """The `supports(...)` function of the module defining `op` (the Triton backends' convention),
    called with the arguments whose names it declares; None when the module has none."""
    fn = reference_fn(op)
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    check = getattr(module, "supports", None)
    if check is None:
        return None
    params = inspect.signature(check).parameters

    def supports_args(args: dict[str, Any]) -> bool:
        kw = {n: args[n] for n in params if n in args}
        return check(**kw)

    return supports_args


# {canonical op name: [BackendOp]} added by register_backend, tried before the torch reference
_EXTRA: dict[str, list[BackendOp]] = {}


def register_backend(canonical: str, name: str, op: OpOverload, supports: Callable[[torch.device], bool] | None = None,
                     supports_args: Callable[[dict[str, Any]], bool] | None = None, pdl: bool = False) -> None:
    """Offer `op` (same schema as autodeploy::<canonical>) as a backend of that canonical op;
    supports_args, pdl: as BackendOp's (None: every call; pdl: only Triton kernels of this package)."""
    entries = [b for b in _EXTRA.setdefault(canonical, []) if b.name != name]
    entries.append(BackendOp(name, op, supports or (lambda device: True), supports_args, pdl))
    _EXTRA[canonical] = entries


def unregister_backend(canonical: str, name: str) -> None:
    _EXTRA[canonical] = [b for b in _EXTRA.get(canonical, []) if b.name != name]


def _triton_op(name: str) -> tuple[OpOverload | None, Callable[[dict[str, Any]], bool] | None, bool]:
    """The Triton twin of canonical op `name`, its support check (the package's SUPPORTS table) and whether
    its kernels launch with PDL (the package's PDL_OPS)."""
    try:  # the package registers its ops on import when triton is installed
        pkg = importlib.import_module("autodeploy.backends.triton")
    except Exception as e:  # triton missing or broken: the torch reference remains
        log.debug("triton backends unavailable: %s", e)
        return None, None, False
    pdl = name in getattr(pkg, "PDL_OPS", ())
    for candidate in (f"triton_{name}", f"{name}_triton"):
        if hasattr(torch.ops.autodeploy, candidate):
            op = getattr(torch.ops.autodeploy, candidate).default
            check = getattr(pkg, "SUPPORTS", {}).get(name)
            if check is None:
                return op, module_supports(op), pdl
            return op, (lambda args, check=check: check(*args.values())), pdl  # args in schema order
    return None, None, False


def backends_for(
    canonical: OpOverload, device: torch.device, *, triton: bool = True, compiled: bool | None = False
) -> list[BackendOp]:
    """The backends that can run `canonical` on `device`, preferred first (torch always present).

    compiled: True always offers the torch.compile'd reference; None offers it only where no
    Triton kernel exists (each costs a compile at a cold start, and rarely beats a kernel).
    """
    name = op_name(canonical)
    out: list[BackendOp] = []
    if triton and device.type == "cuda":
        op, check, pdl = _triton_op(name)
        if op is not None:
            out.append(BackendOp("triton", op, supports_args=check, pdl=pdl))
    # extras named "triton-..." (a second Triton kernel of the op) follow the triton switch too
    out.extend(b for b in _EXTRA.get(name, []) if b.supports(device) and (triton or not b.name.startswith("triton")))
    out.append(BackendOp("torch", canonical))
    if compiled or (compiled is None and not any(b.name == "triton" for b in out)):
        op = compiled_variant(canonical)
        if op is not None:
            out.append(BackendOp("torch-compile", op))
    return out


def linear_backends(device: torch.device, *, triton: bool = True) -> list[BackendOp]:
    """The backends of aten.linear (weights [N, K]), preferred first: aten.linear itself (cuBLAS), then
    the Triton GEMV twin on CUDA and registered extras (register_backend("linear", ...)). cuBLAS comes
    first so that without timing (--no-autotune) or on a tie the graph keeps it: the kernel is only
    worth its place where it was timed faster. No torch.compile candidate: Inductor lowers a lone
    linear to the same cuBLAS call."""
    backends = backends_for(LINEAR, device, triton=triton, compiled=False)
    return [b for b in backends if b.name == "torch"] + [b for b in backends if b.name != "torch"]
