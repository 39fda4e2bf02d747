"""A disk cache of exported programs: the second optimize of the same model skips tracing.

torch.export traces the HF model's Python code op by op; for the Llama-3.2-1B shape that is 8-12 s
of a warm optimize's ~18 s on the H100 machine, while `torch.export.load` of the saved program
takes a second or two. The entry is keyed by everything that can change the traced graph:

    the model class and the source file defining it (transformers version, trust_remote_code code),
    its config (all fields), the parameter dtype, the dynamic-dim ranges, the export code and
    patches of this package (their source text), and the torch / transformers versions.

Weights are never part of an entry: export runs on the meta device. An entry that fails to load
(torch upgrade, truncated file) is dropped and the model is traced again. `model.export_cache:
false` in a recipe, or AUTODEPLOY_EXPORT_CACHE=0 in the environment, turns the cache off.

    <cache_dir>/export/<key>.pt2     torch.export.save of the ExportedProgram
    <cache_dir>/export/<key>.json    {"patches": [...]}: what export_model records in gm.meta
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from autodeploy.export.load_memos import memoized_load

log = logging.getLogger(__name__)

_EXPORT_DIR = Path(__file__).resolve().parent


def enabled(recipe_flag: bool = True) -> bool:
    return recipe_flag and os.environ.get("AUTODEPLOY_EXPORT_CACHE", "1").lower() not in ("0", "false", "off", "no")


def _source_text_hash() -> str:
    """Hash of this package's export code and patches: editing either invalidates every entry."""
    h = hashlib.sha256()
    for path in sorted(_EXPORT_DIR.rglob("*.py")):
        h.update(path.relative_to(_EXPORT_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _model_source_hash(model: nn.Module) -> str:
    """Hash of the file defining the model class (remote code included); '' when it has none."""
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(type(model))).read_bytes()).hexdigest()
    except (TypeError, OSError):
        return ""


def cache_key(model: nn.Module, max_batch: int, max_seq: int) -> str:
    import transformers

    config = getattr(model, "config", None)
    cfg = config.to_dict() if config is not None else {}
    dtype = next((str(p.dtype) for p in model.parameters()), "")
    parts = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_source": _model_source_hash(model),
        "config": cfg,
        "dtype": dtype,
        "dims": [max_batch, max_seq],
        "export_source": _source_text_hash(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    d = root / "export"
    return d / f"{key}.pt2", d / f"{key}.json"


def load(root: Path, key: str):
    """(ExportedProgram, patches) from the cache, or None when absent or unreadable."""
    program, side = _paths(root, key)
    if not program.exists() or not side.exists():
        return None
    try:
        ep = memoized_load(program)  # torch.export.load, minus its repeated hint and sympy work
        patches = json.loads(side.read_text())["patches"]
    except Exception as e:  # a stale or truncated entry: trace again and overwrite it
        log.warning("export cache entry %s unreadable (%s: %s): exporting again", program.name, type(e).__name__, e)
        program.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        return None
    return ep, patches


def save(root: Path, key: str, ep, patches: list[str]) -> None:
    """Write an entry atomically (a crash mid-write leaves no half entry behind)."""
    program, side = _paths(root, key)
    try:
        program.parent.mkdir(parents=True, exist_ok=True)
        tmp = program.with_name(f"{key}.tmp{os.getpid()}.pt2")  # ranks may save one key at once; torch wants .pt2
        torch.export.save(ep, tmp)
        os.replace(tmp, program)
        tmp = side.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"patches": list(patches)}))
        os.replace(tmp, side)
    except Exception as e:  # caching is an optimization: a read-only cache dir must not fail optimize
        log.warning("export cache: could not save %s (%s: %s)", program.name, type(e).__name__, e)
