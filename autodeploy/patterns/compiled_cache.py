"""A disk cache of compiled pattern graphs: a fresh process matches without tracing its patterns.

Compiling a pattern (registry.compiled) traces its search function with make_fx at two example
sizes per dtype. One optimize of a bf16 Llama compiles ~28 variants (~56 traces, each through fake
tensors and the proxy dispatcher): ~40% of the CPU time of its transforms under a profiler, spent
again by every process. What a compile yields is small and plain (node targets, literal arguments,
comparison specs), so it is kept as JSON:

    <cache_dir>/patterns/<key>.json    {"<module>:<pattern name>:<dtype>": {"nodes": [...], ...}}

key = the torch and transformers versions and the source text of the whole autodeploy package (a
pattern's trace depends on its own code, the tidy-up of cleanup_export and the custom ops' fake
implementations; hashing everything is simpler than tracking that). Only patterns defined in the
autodeploy package are stored: the hash covers nothing else. A variant with a target or literal this
encoding does not know is traced every time. AUTODEPLOY_PATTERN_CACHE=0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
from pathlib import Path
from typing import Any

import torch
from torch import fx

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent.parent  # autodeploy/


class _Unencodable(Exception):
    pass


def enabled() -> bool:
    return os.environ.get("AUTODEPLOY_PATTERN_CACHE", "1").lower() not in ("0", "false", "off", "no")


def _package_key() -> str:
    import transformers

    h = hashlib.sha256(f"{torch.__version__}|{transformers.__version__}".encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def entry_name(pattern, dtype: torch.dtype) -> str | None:
    """The pattern's name in the store, or None when it is not the package's own (not stored)."""
    module = getattr(pattern.search, "__module__", "") or ""
    if not module.startswith("autodeploy."):
        return None
    return f"{module}:{pattern.name}:{str(dtype).removeprefix('torch.')}"


# ---- encoding ----------------------------------------------------------------------------------

_ENUMS = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}


def _encode_target(target) -> dict:
    if isinstance(target, torch._ops.OpOverload):
        return {"op": target.name() if "." in target.name() else f"{target.name()}.default"}
    if getattr(operator, getattr(target, "__name__", ""), None) is target:
        return {"operator": target.__name__}
    raise _Unencodable(f"target {target!r}")


def _decode_target(d: dict):
    if "operator" in d:
        return getattr(operator, d["operator"])
    qualified, overload = d["op"].rsplit(".", 1)
    namespace, name = qualified.split("::")
    return getattr(getattr(getattr(torch.ops, namespace), name), overload)


def _encode(v: Any, index: dict[fx.Node, int]) -> Any:
    """JSON for an argument or a spec: plain scalars as they are, everything else tagged."""
    if isinstance(v, fx.Node):
        return {"node": index[v]}
    if v is None or type(v) in (bool, int, str):
        return v
    if type(v) is float:
        return {"float": repr(v)}  # repr round-trips exactly, inf and nan included
    if isinstance(v, (list, tuple)):  # fx keeps lists as its immutable_list
        return {"list" if isinstance(v, list) else "tuple": [_encode(x, index) for x in v]}
    for tag, cls in _ENUMS.items():
        if isinstance(v, cls):
            return {tag: str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    raise _Unencodable(f"literal {v!r} ({type(v).__name__})")


def _decode(v: Any, nodes: list[fx.Node]) -> Any:
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "node":
        return nodes[x]
    if tag == "float":
        return float(x)
    if tag in ("list", "tuple"):
        items = [_decode(i, nodes) for i in x]
        return items if tag == "list" else tuple(items)
    if tag == "device":
        return torch.device(x)
    return getattr(torch, x)  # dtype, layout, memory_format


def encode(graph: fx.Graph, inputs: dict, outputs: list, specs: dict, size: int) -> dict:
    """A compiled variant as JSON; raises _Unencodable for what the format does not cover."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    rows = []
    for n in graph.nodes:
        if n.op not in ("placeholder", "call_function", "output"):
            raise _Unencodable(f"node op {n.op}")
        target = _encode_target(n.target) if n.op == "call_function" else n.target
        kwargs = {k: _encode(v, index) for k, v in n.kwargs.items()}
        rows.append([n.op, n.name, target, _encode(tuple(n.args), index), kwargs])
    return {
        "nodes": rows,
        "inputs": {str(index[p]): name for p, name in inputs.items()},
        "outputs": [index[o] for o in outputs],
        "specs": {str(index[n]): _encode(s, index) for n, s in specs.items()},
        "size": size,
    }


def decode(d: dict) -> tuple[fx.Graph, dict, list, dict, int]:
    """(graph, inputs, outputs, specs, size) as registry._compile_one builds them."""
    graph, nodes = fx.Graph(), []
    for op, name, target, args, kwargs in d["nodes"]:
        args, kwargs = _decode(args, nodes), {k: _decode(v, nodes) for k, v in kwargs.items()}
        if op == "placeholder":
            node = graph.placeholder(name)
        elif op == "output":
            node = graph.output(args[0])
        else:
            node = graph.create_node(op, _decode_target(target), args, kwargs, name=name)
        if node.name != name:
            raise ValueError(f"node name {name} became {node.name}")
        nodes.append(node)
    inputs = {nodes[int(i)]: name for i, name in d["inputs"].items()}
    specs = {nodes[int(i)]: _decode(s, nodes) for i, s in d["specs"].items()}
    return graph, inputs, [nodes[i] for i in d["outputs"]], specs, d["size"]


# ---- the store ---------------------------------------------------------------------------------


class Store:
    """The entries of one key: read once per process, written back when a variant is added."""

    def __init__(self, root: Path) -> None:
        self.path = root / "patterns" / f"{_package_key()}.json"
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.entries = {}
        except (OSError, ValueError) as e:  # truncated or unreadable: start over
            log.warning("pattern cache %s unreadable (%s): tracing again", self.path.name, e)
            self.entries = {}

    def get(self, name: str):
        d = self.entries.get(name)
        if d is None:
            return None
        try:
            return decode(d)
        except Exception as e:  # an op that is gone, a hand-edited file: trace instead
            log.warning("pattern cache entry %s unusable (%s: %s): tracing it", name, type(e).__name__, e)
            return None

    def put(self, name: str, graph, inputs, outputs, specs, size) -> None:
        try:
            self.entries[name] = encode(graph, inputs, outputs, specs, size)
        except _Unencodable as e:
            log.debug("pattern %s not stored: %s", name, e)
            return
        try:  # ranks may write at once: each replaces the file whole
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
        except OSError as e:  # caching is an optimization: a read-only cache dir must not fail optimize
            log.warning("pattern cache: could not write %s (%s)", self.path.name, e)


_store: Store | None = None


def store() -> Store | None:
    """This process's store, or None when the cache is off."""
    global _store
    if not enabled():
        return None
    from autodeploy.models.example import cache_dir

    root = cache_dir()
    if _store is None or _store.path.parents[1] != root:
        _store = Store(root)
    return _store
