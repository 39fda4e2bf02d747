"""Resolve a model source string.

    org/name                 hub id (safetensors only; needs the hub or its local cache)
    ./dir, /abs/dir          local directory with config.json and *.safetensors
    file.gguf                a GGUF file (transformers dequantizes it on load)
    example:smollm2          the example GGUF, fetched once into the cache and converted to a
                             safetensors folder (see models/example.py)
    random:<x>               random weights; x = a named shape (llama-3.2-1b, llama-3.1-8b,
                             smollm2-135m), a config directory, a hub id, or example:<name>

Pickle checkpoints (*.bin, *.pt) are never loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autodeploy.errors import SourceError, UnsupportedModelError

Kind = Literal["hub", "local", "gguf", "random"]


@dataclass
class ModelSource:
    spec: str  # the string the user gave
    kind: Kind
    location: str | None  # hub id or directory (for gguf: the directory holding the file)
    gguf_file: str | None = None  # file name inside `location`
    config: Any = None  # transformers.PretrainedConfig
    trust_remote_code: bool = False
    has_tokenizer: bool = True
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec

    def hf_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        kw.update(self.load_kwargs)
        return kw


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith(".gguf") or os.sep in s and s.count("/") > 1


def _load_config(location: str, what: str, **kw):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, **kw)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "trust_remote_code" in msg:
            raise SourceError(
                f"{what} needs its own Python code; set model.trust_remote_code=true to allow it"
            ) from None
        raise UnsupportedModelError(f"{what}: transformers cannot read its config: {msg}") from None
    except OSError as e:
        raise SourceError(f"{what}: {str(e).splitlines()[0]}") from None


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").exists():
        raise SourceError(f"directory {path} has no config.json (not a Hugging Face model folder)")


def _check_weights(path: Path) -> None:
    if list(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
        return
    pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles:
        raise SourceError(
            f"directory {path} has only pickle weights ({', '.join(sorted(pickles)[:3])}); "
            "autodeploy loads safetensors only (convert with save_pretrained(safe_serialization=True))"
        )
    raise SourceError(f"directory {path} has no *.safetensors weights (use random:{path} for random weights)")


def resolve_source(source: str, *, trust_remote_code: bool = False, check_weights: bool = True) -> ModelSource:
    """Turn a source string into a ModelSource with its config loaded; raises SourceError naming the cause."""
    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty model source")
    source = source.strip()
    if source.startswith("random:"):
        inner = source[len("random:"):]
        from autodeploy.models.shapes import named_shape_config

        cfg = named_shape_config(inner)
        if cfg is not None:
            return ModelSource(source, "random", None, config=cfg, has_tokenizer=False)
        base = resolve_source(inner, trust_remote_code=trust_remote_code, check_weights=False)
        return ModelSource(source, "random", base.location, base.gguf_file, base.config, trust_remote_code,
                           has_tokenizer=base.has_tokenizer)
    if source.startswith("example:"):
        from autodeploy.models.example import example_dir

        path = example_dir(source[len("example:"):])
        src = resolve_source(str(path), trust_remote_code=trust_remote_code, check_weights=check_weights)
        src.spec = source
        return src

    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise SourceError(f"{path} is a file but not a .gguf (give a model directory, a .gguf file or a hub id)")
            cfg = _load_config(str(path.parent), f"GGUF file {path}", gguf_file=path.name)
            return ModelSource(source, "gguf", str(path.parent), path.name, cfg, trust_remote_code)
        _check_local_dir(path)
        if check_weights:
            _check_weights(path)
        cfg = _load_config(str(path), f"model directory {path}", trust_remote_code=trust_remote_code)
        has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        return ModelSource(source, "local", str(path), None, cfg, trust_remote_code, has_tokenizer=has_tok)
    if _looks_like_path(source):
        raise SourceError(f"no such file or directory: {source}")
    if source.count("/") != 1 or any(c in source for c in " \t:\\"):
        raise SourceError(f"'{source}' is neither an existing path nor a Hugging Face hub id (org/name)")
    return _resolve_hub(source, trust_remote_code)


def _hub_host() -> tuple[str, int]:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub: without it, huggingface_hub retries for ~30 s before giving up."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection(_hub_host(), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_hub(source: str, trust_remote_code: bool) -> ModelSource:
    """The local HF cache first; the hub only when it answers (never a long retry loop offline)."""
    what = f"hub model '{source}'"
    online = _hub_reachable()
    try:
        cfg = _load_config(source, what, trust_remote_code=trust_remote_code, local_files_only=True)
    except SourceError:
        if not online:
            raise SourceError(
                f"'{source}' is not a local path and not in the Hugging Face cache, and {_hub_host()[0]} "
                "is unreachable (offline?); give a local folder or a .gguf file"
            ) from None
        cfg = _load_config(source, what, trust_remote_code=trust_remote_code)
    src = ModelSource(source, "hub", source, None, cfg, trust_remote_code)
    if not online:
        src.load_kwargs["local_files_only"] = True  # weights and tokenizer from the cache too
    return src
