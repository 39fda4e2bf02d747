"""Loading weights into the transformed graph.

The graph is exported with parameters on the meta device. Transforms that change parameters
(GEMM fusion, sharding, quantization) do not touch tensors: they record in the graph's
`WeightPlan` how the new parameter is produced from checkpoint tensors. `load_weights` then
builds every parameter once, on the target device:

    plan.set("fused.qkv_weight", lambda fetch: torch.cat([fetch(q), fetch(k), fetch(v)]))

A buffer that no checkpoint holds but the graph can compute (transforms/fold_position_tables.py's tables) is
derived instead, on the device the weights load to:

    plan.derive("position_table_0", lambda device: table_on(device))

`fetch(name)` returns a checkpoint tensor by its HF name and drops it from the pool once used, so
a fused weight replaces its parts instead of living next to them. `fetch(name, index=…)` returns
only a part (a tuple of slices), read lazily where the pool can (`pool.read_part`, a safetensors
slice): that is how a sharded rank loads its slice without the whole tensor on its device.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import fx, nn

from autodeploy.errors import SourceError

Fetch = Callable[..., torch.Tensor]  # fetch(name) or fetch(name, index=(slice, ...))
Producer = Callable[[Fetch], torch.Tensor]
Derive = Callable[[torch.device], torch.Tensor]  # a buffer computed on the load device, read from no checkpoint
# Runs before any parameter is produced (calibration): (fetch, peek, device). `peek` reads a
# checkpoint tensor without taking it, so it stays for its own producer.
BeforeLoad = Callable[[Fetch, Fetch, torch.device], None]

# The export wrapper holds the HF model as `.model`, so graph names carry this prefix.
GRAPH_PREFIX = "model."


def checkpoint_name(graph_name: str) -> str:
    return graph_name[len(GRAPH_PREFIX):] if graph_name.startswith(GRAPH_PREFIX) else graph_name


class WeightPlan:
    """Per graph parameter: how to produce it from checkpoint tensors (default: the same name)."""

    def __init__(self) -> None:
        self.rules: dict[str, Producer] = {}
        self.consumed: set[str] = set()  # checkpoint names only used through rules
        self.before_load: list[BeforeLoad] = []
        self.derived: dict[str, Derive] = {}  # graph buffer name -> how to compute it on a device

    def derive(self, graph_name: str, fn: Derive) -> None:
        self.derived[graph_name] = fn

    def set(self, graph_name: str, producer: Producer, consumes: list[str] | None = None) -> None:
        self.rules[graph_name] = producer
        self.consumed.update(consumes or [])

    def produce(self, graph_name: str, fetch: Fetch) -> torch.Tensor:
        rule = self.rules.get(graph_name)
        return rule(fetch) if rule is not None else fetch(checkpoint_name(graph_name))


def weight_plan(gm: fx.GraphModule) -> WeightPlan:
    plan = gm.meta.get("weight_plan")
    if plan is None:
        plan = gm.meta["weight_plan"] = WeightPlan()
    return plan


def _set_tensor(gm: nn.Module, name: str, tensor: torch.Tensor, is_param: bool) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    if is_param:
        parent.register_parameter(attr, nn.Parameter(tensor, requires_grad=False))
    else:
        parent.register_buffer(attr, tensor, persistent=attr in parent._buffers and attr not in parent._non_persistent_buffers_set)


def load_weights(gm: fx.GraphModule, state: dict[str, torch.Tensor], device: torch.device | str) -> None:
    """Fill every parameter and buffer of `gm` from `state` through the graph's WeightPlan.

    `state` is consumed: each tensor is popped from it as it loads, so a part of a fused weight
    is freed once the fused tensor is built (the caller keeps no second reference).
    """
    from autodeploy.export.device import retarget_device

    device = torch.device(device)
    plan = weight_plan(gm)
    pool = state
    produced: dict[str, torch.Tensor] = {}  # checkpoint name -> tensor, so tied names share storage

    def fetch_part(name: str, index: tuple) -> torch.Tensor:
        if name in produced:
            t = produced[name][index]
        elif name not in pool:
            raise SourceError(f"checkpoint has no tensor '{name}' needed by the graph")
        elif hasattr(pool, "read_part"):  # lazy: only the part is read from the file
            t = pool.read_part(name, index)
        else:  # the whole tensor stays in the pool (other parts may follow); only the part moves
            t = pool[name][index]
        t = t.to(device)
        if t._is_view():  # a view would keep the whole tensor's storage alive
            t = t.clone()
        return t

    def fetch(name: str, index: tuple | None = None) -> torch.Tensor:
        if index is not None:
            return fetch_part(name, index)
        if name in produced:
            return produced[name]
        if name not in pool:
            raise SourceError(f"checkpoint has no tensor '{name}' needed by the graph")
        t = pool.pop(name).to(device)
        if name not in plan.consumed:  # parts of a rule's product are not kept alive beside it
            produced[name] = t
        return t

    def peek(name: str) -> torch.Tensor:
        if name in produced:
            return produced[name]
        if name not in pool:
            raise SourceError(f"checkpoint has no tensor '{name}' needed by the graph")
        t = pool[name] = pool[name].to(device)
        return t

    for hook in plan.before_load:
        hook(fetch, peek, device)
    params = dict(gm.named_parameters(remove_duplicate=False))
    for name in params:
        _set_tensor(gm, name, plan.produce(name, fetch), is_param=True)
    for name, buf in list(gm.named_buffers(remove_duplicate=False)):
        if name in plan.derived:
            _set_tensor(gm, name, plan.derived[name](device), is_param=False)
            continue
        key = checkpoint_name(name)
        src = pool.get(key, produced.get(key))
        if src is None:
            src = buf
        if src.is_meta:
            raise SourceError(f"buffer '{key}' has no value (not in the checkpoint and not computed at build)")
        _set_tensor(gm, name, src.to(device), is_param=False)
    produced.clear()
    retarget_device(gm, device)
