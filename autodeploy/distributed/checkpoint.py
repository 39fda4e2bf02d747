"""What a rank loads its weights from: a lazy safetensors state, or the whole checkpoint kept off the GPU.

    rank_state(src, recipe, device)   world size 1: materialize_state, as before
                                      sharded, a safetensors folder (local, or a hub model's snapshot
                                      in the HF cache) whose tensor names are the model's own (Llama,
                                      Qwen, Mistral, Gemma …):
                                          LazySafetensors — nothing read until a producer asks;
                                          fetch(name, index=…) reads only the rank's slice
                                      sharded, anything else (per-expert checkpoints that
                                      transformers converts to stacked 3-D experts, GGUF,
                                      pre-quantized): transformers loads the whole state on the
                                      CPU and each rank moves only its slices to its device (the
                                      GPU never holds it whole; host memory does, once per rank)
                                      random: sources: initialized on the device (every rank with
                                      the same seed, so the slices agree)

Dtypes are the meta model's own (the recipe dtype, fp32 where the model keeps it), and tied
weights (lm_head = embed_tokens) resolve to the one tensor the checkpoint stores.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import torch

from autodeploy.distributed import dist

log = logging.getLogger(__name__)


class LazySafetensors:
    """A dict-like {checkpoint name: tensor} over safetensors files, read on access.

    `pop` / `[]` read a whole tensor (replicated parameters); `read_part(name, index)` reads only
    `index` of it through safe_open's get_slice, so the file's other rows never reach memory.
    """

    def __init__(self, files: dict[str, Path], aliases: dict[str, str], dtypes: dict[str, torch.dtype]):
        self.files = files  # stored key -> file
        self.aliases = aliases  # model name -> stored key (itself, or a tied weight's stored twin)
        self.dtypes = dtypes  # model name -> dtype the graph expects
        self.taken: set[str] = set()
        self.overrides: dict[str, torch.Tensor] = {}  # written back by the loader (peek)

    def _key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def _cast(self, name: str, t: torch.Tensor) -> torch.Tensor:
        dtype = self.dtypes.get(name)
        return t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name not in self.taken and (
            name in self.overrides or self._key(name) in self.files)

    def keys(self) -> Iterator[str]:
        return iter([n for n in self.aliases if n in self])

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.overrides:
            return self.overrides[name]
        if name not in self:
            raise KeyError(name)
        from safetensors import safe_open

        key = self._key(name)
        with safe_open(str(self.files[key]), framework="pt") as f:
            return self._cast(name, f.get_tensor(key))

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.overrides[name] = value

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def pop(self, name: str) -> torch.Tensor:
        t = self[name]
        self.overrides.pop(name, None)
        self.taken.add(name)
        return t

    def read_part(self, name: str, index: tuple) -> torch.Tensor:
        if name in self.overrides:
            return self.overrides[name][index]
        from safetensors import safe_open

        key = self._key(name)
        with safe_open(str(self.files[key]), framework="pt") as f:
            return self._cast(name, f.get_slice(key)[index])


def _stored_keys(directory: Path) -> dict[str, Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: directory / f for k, f in weight_map.items()}
    from safetensors import safe_open

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out.update({k: file for k in f.keys()})
    return out


def lazy_state(src, recipe) -> LazySafetensors | None:
    """The lazy state of a local safetensors folder whose names are the model's; None otherwise."""
    from autodeploy.models.factory import build_meta_model
    from autodeploy.quantization.checkpoint import quant_method

    folder = _local_folder(src)
    if folder is None or quant_method(src.config) is not None:
        return None
    files = _stored_keys(folder)
    if not files:
        return None
    model = build_meta_model(src, recipe)
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update({n: b for n, b in model.named_buffers(remove_duplicate=False)
                    if n.rsplit(".", 1)[-1] not in _non_persistent(model, n)})
    by_id: dict[int, list[str]] = {}
    for name, t in tensors.items():
        by_id.setdefault(id(t), []).append(name)
    tied = _tied_weights(model)  # the meta model is not tied yet: transformers ties on load
    aliases: dict[str, str] = {}
    for names in by_id.values():
        stored = next((n for n in names if n in files), None)
        if stored is None and tied.get(names[0]) in files:
            stored = tied[names[0]]
        if stored is None:
            log.info("checkpoint lacks %s under the model's names: whole-state load", names[0])
            return None
        aliases.update({n: stored for n in names})
    return LazySafetensors(files, aliases, {n: t.dtype for n, t in tensors.items()})


def _tied_weights(model) -> dict[str, str]:
    """{tied name: the name it shares its tensor with}, as transformers ties them on load."""
    expanded = getattr(model, "get_expanded_tied_weights_keys", None)
    if expanded is not None:
        try:
            return dict(expanded(all_submodels=True))
        except TypeError:
            return dict(expanded())
    keys = getattr(model, "_tied_weights_keys", None)
    return dict(keys) if isinstance(keys, dict) else {}


def _local_folder(src) -> Path | None:
    """The folder holding the source's safetensors: a local source's own, a hub model's snapshot in
    the Hugging Face cache (fetched there first when the hub answers)."""
    if src.kind == "local" and src.location is not None:
        return Path(src.location)
    if src.kind != "hub":
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src.location, allow_patterns=["*.safetensors", "*.json"],
                                      local_files_only=bool(src.load_kwargs.get("local_files_only"))))
    except Exception as e:  # noqa: BLE001 (no snapshot: transformers' own loading reports it)
        log.info("%s: no local snapshot (%s): whole-state load", src.spec, str(e).splitlines()[0] if str(e) else e)
        return None


def _non_persistent(model, buffer_name: str) -> set[str]:
    path = buffer_name.rsplit(".", 1)[0] if "." in buffer_name else ""
    mod = model.get_submodule(path) if path else model
    return set(mod._non_persistent_buffers_set)


def rank_state(src, recipe, device: torch.device):
    """The state `load_weights` reads for this rank (see the module docstring)."""
    from autodeploy.models.factory import materialize_state

    if dist.requested_world_size(recipe.runtime) <= 1:
        return materialize_state(src, recipe, device)
    lazy = lazy_state(src, recipe)
    if lazy is not None:
        return lazy
    # random weights initialize fast on the device; a checkpoint transformers must convert stays on the host
    where = device if src.kind == "random" else torch.device("cpu")
    if src.kind != "random":
        log.info("%s: whole checkpoint read on the CPU by transformers; each rank moves its slices to %s",
                 src.spec, device)
    return materialize_state(src, recipe, where)
