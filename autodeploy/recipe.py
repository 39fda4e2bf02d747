"""Recipes: pydantic-validated YAML describing how to optimize and run a model.

Merge order: defaults (the field defaults below) < recipe file < overrides (CLI `--set key=value`
or keyword arguments of `autodeploy.optimize`). Every unknown key is an error naming the key and
where it came from (the file, or `--set`).

    runtime:      dtype, device, batch / sequence limits, KV pages, compile backend
    model:        how the source is loaded and exported
    transforms:   {transform_name: {enabled: bool, ...that transform's config}}
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autodeploy.errors import RecipeError

DType = Literal["float32", "bfloat16", "float16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(_Strict):
    dtype: DType = Field("bfloat16", description="Activation and weight dtype of the runtime.")
    device: str = Field("cuda", description="torch device the runtime runs on (cpu, cuda, cuda:1).")
    max_batch_size: int = Field(8, ge=1, description="Most sequences in one forward step.")
    max_seq_len: int = Field(2048, ge=2, description="Longest prompt plus generated tokens.")
    max_num_tokens: int = Field(4096, ge=1, description="Token budget of one forward step.")
    kv_page_size: int = Field(16, ge=1, description="Tokens per KV-cache page.")
    kv_memory_gb: float | None = Field(None, gt=0, description="KV pool budget in GiB; null: from free memory.")
    kv_num_pages: int | None = Field(None, ge=1, description="KV pool size in pages; wins over kv_memory_gb.")
    enable_prefix_caching: bool = Field(
        False, description="Reuse the KV pages of a prompt prefix already computed (full pages, matched by hash)."
    )
    compile_backend: Literal["eager", "torch-compile", "cuda-graph"] = Field(
        "eager", description="How the transformed graph runs: as is, torch.compile, or compiled with CUDA graphs."
    )
    torch_compile: bool = Field(
        True, description="cuda-graph backend: compile the graph with torch.compile before capturing (Inductor fuses "
        "the aten ops between custom ops); false: capture the transformed graph as is (no Inductor: a far shorter "
        "optimize, and prefill / mixed steps run the graph eagerly).",
    )
    cuda_graph_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], description="Decode batch buckets captured as CUDA graphs."
    )
    seed: int = Field(0, description="Seed for random weights (random: sources).")
    world_size: int | None = Field(
        None, ge=1, description="Ranks the model is split over (tensor / expert parallel); null: the launcher's "
        "WORLD_SIZE (torchrun), else 1.",
    )
    all_reduce: Literal["auto", "oneshot", "nccl"] = Field(
        "auto", description="Tensor-parallel all-reduces on CUDA: auto sends decode-sized ones through the push "
        "kernel (each rank stores its rows into its peers' symmetric memory; fused with the residual add + RMSNorm "
        "after it), other small ones through torch's one-shot kernel, falling back to NCCL where these are "
        "unavailable; oneshot: torch's one-shot kernel for every small one; nccl: all NCCL.",
    )
    overlap_scheduling: bool = Field(
        True, description="Launch each step before reading the previous step's tokens (hides host work behind the GPU)."
    )


class ModelConfig(_Strict):
    trust_remote_code: bool = Field(False, description="Allow the checkpoint's own Python code (off by default).")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="HF attention path exported: auto picks sdpa where the model supports it, else eager."
    )
    experts_implementation: Literal["grouped_mm", "batched_mm"] = Field(
        "grouped_mm", description="HF MoE experts path exported (the eager expert loop cannot export)."
    )
    export_cache: bool = Field(
        True, description="Reuse a saved torch.export program of the same model, code and versions "
        "(<cache>/export/; AUTODEPLOY_EXPORT_CACHE=0 also turns it off)."
    )


class Recipe(_Strict):
    name: str = Field("custom", description="Recipe name, shown in reports.")
    description: str = Field("", description="What hardware or use the recipe targets.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Runtime settings.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model loading and export settings.")
    transforms: dict[str, Any] = Field(default_factory=dict, description="Per-transform configs by registry name.")

    @field_validator("transforms", mode="before")
    @classmethod
    def _check_transforms(cls, value: Any) -> dict[str, Any]:
        from autodeploy.transforms.pipeline import registry

        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of transform name to config")
        known = registry()
        out = {}
        for name, cfg in value.items():
            if name not in known:
                raise ValueError(f"unknown transform '{name}' (known: {', '.join(sorted(known))})")
            spec = known[name]
            cfg = cfg if cfg is not None else {}
            if isinstance(cfg, spec.config_cls):
                out[name] = cfg
                continue
            if not isinstance(cfg, dict):
                raise ValueError(f"transform '{name}' needs a mapping of config values")
            try:
                out[name] = spec.config_cls(**cfg)
            except ValidationError as e:
                raise ValueError(_format_errors(e, f"transforms.{name}")) from None
        return out

    def transform_config(self, name: str):
        """The config of transform `name`: the recipe's, else the transform's defaults."""
        from autodeploy.transforms.pipeline import registry

        return self.transforms.get(name) or registry()[name].config_cls()


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}" if key else msg)
    return "; ".join(parts)


def recipes_dir() -> Path:
    """Recipes ship inside the wheel as autodeploy/recipes; in a source checkout they live at the top level."""
    packaged = resources.files("autodeploy").joinpath("recipes")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {path}: malformed YAML at{where}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise RecipeError(f"recipe {path}: cannot read ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_recipe_path(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise RecipeError(f"recipe file {path} does not exist")
        return path
    candidate = recipes_dir() / f"{recipe}.yaml"
    if not candidate.exists():
        raise RecipeError(f"unknown recipe '{recipe}' (shipped: {', '.join(list_recipes())}; or give a .yaml path)")
    return candidate


def parse_override(item: str) -> tuple[str, Any]:
    """`runtime.max_batch_size=4` -> ("runtime.max_batch_size", 4); values parse as YAML scalars."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key=value, e.g. runtime.max_batch_size=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {key}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def build_recipe(data: dict[str, Any], origin: str, overrides: dict[str, Any] | None = None) -> Recipe:
    data = copy.deepcopy(data)
    overrides = overrides or {}
    for key, value in overrides.items():
        _apply_override(data, key, value)
    try:
        return Recipe(**data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            from_cli = any(loc == k or loc.startswith(k + ".") or k.startswith(loc + ".") for k in overrides)
            where = "--set" if from_cli else origin
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            msgs.append(f"{where}: {loc}: {msg}")
        raise RecipeError("; ".join(msgs)) from None


def load_recipe(recipe: str | Path | Recipe | None = "cpu", overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Load a recipe by shipped name or path and apply overrides (a dict of dotted keys, or `key=value` strings)."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    if isinstance(recipe, Recipe):
        return build_recipe(recipe.model_dump(), f"recipe {recipe.name}", overrides)
    if recipe is None:
        return build_recipe({}, "defaults", overrides)
    path = resolve_recipe_path(recipe)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    return build_recipe(data, f"recipe {path}", overrides)
