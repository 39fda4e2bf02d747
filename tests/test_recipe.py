"""Recipes: merge order, validation errors naming key and origin, the shipped recipes."""

from __future__ import annotations

import pytest

from autodeploy.errors import RecipeError
from autodeploy.recipe import ModelConfig, Recipe, RuntimeConfig, list_recipes, load_recipe, parse_override
from autodeploy.transforms.pipeline import TransformConfig, registry


def write(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_merge_order_defaults_file_overrides(tmp_path):
    path = write(tmp_path, "runtime:\n  device: cpu\n  max_batch_size: 4\n  max_seq_len: 512\n")
    rec = load_recipe(path, {"runtime.max_seq_len": 99})
    assert rec.runtime.max_seq_len == 99  # --set beats the file
    assert rec.runtime.max_batch_size == 4  # the file beats the default (8)
    assert rec.runtime.kv_page_size == RuntimeConfig.model_fields["kv_page_size"].default  # untouched default
    assert rec.name == "r"  # a file without a name is named after its stem


def test_overrides_as_cli_strings(tmp_path):
    path = write(tmp_path, "runtime: {device: cpu}\n")
    rec = load_recipe(path, ["runtime.max_batch_size=2", "runtime.dtype=float16", "transforms.cleanup_export.enabled=false"])
    assert rec.runtime.max_batch_size == 2
    assert rec.runtime.dtype == "float16"
    assert rec.transform_config("cleanup_export").enabled is False


def test_override_of_a_loaded_recipe_object():
    base = load_recipe("cpu")
    rec = load_recipe(base, {"runtime.max_batch_size": 3})
    assert rec.runtime.max_batch_size == 3 and base.runtime.max_batch_size == 8
    assert rec.runtime.device == "cpu"


def test_no_recipe_gives_the_defaults():
    assert load_recipe(None) == Recipe()


@pytest.mark.parametrize(
    "item, expected",
    [
        ("runtime.max_batch_size=4", ("runtime.max_batch_size", 4)),
        ("runtime.kv_memory_gb=0.5", ("runtime.kv_memory_gb", 0.5)),
        ("model.trust_remote_code=true", ("model.trust_remote_code", True)),
        ("runtime.cuda_graph_batch_sizes=[1, 2]", ("runtime.cuda_graph_batch_sizes", [1, 2])),
        ("runtime.device=cuda:1", ("runtime.device", "cuda:1")),
        ("runtime.kv_memory_gb=null", ("runtime.kv_memory_gb", None)),
    ],
)
def test_parse_override_values_as_yaml_scalars(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["runtime.max_batch_size", "=4"])
def test_parse_override_rejects_malformed(item):
    with pytest.raises(RecipeError, match="--set"):
        parse_override(item)


def test_type_error_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "runtime:\n  max_batch_size: lots\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "runtime.max_batch_size" in msg and "integer" in msg
    assert "\n" not in msg


def test_type_error_in_override_names_set(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe("cpu", {"runtime.max_batch_size": 0})
    msg = str(e.value)
    assert msg.startswith("--set: runtime.max_batch_size")
    assert "greater than or equal to 1" in msg


def test_bad_literal_lists_choices():
    with pytest.raises(RecipeError, match="runtime.dtype.*'float32', 'bfloat16' or 'float16'"):
        load_recipe("cpu", {"runtime.dtype": "fp8"})


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "runtime:\n  device: cpu\nruntim:\n  dtype: float32\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert f"recipe {path}: runtim: unknown key" == str(e.value)


def test_unknown_transform_name(tmp_path):
    path = write(tmp_path, "transforms:\n  fuse_everything: {enabled: true}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "unknown transform 'fuse_everything'" in msg and "cleanup_export" in msg


def test_unknown_transform_field(tmp_path):
    path = write(tmp_path, "transforms:\n  cleanup_export: {enabled: true, aggressive: 1}\n")
    with pytest.raises(RecipeError, match=r"transforms\.cleanup_export\.aggressive: unknown key"):
        load_recipe(path)


def test_unknown_transform_via_set_names_set():
    with pytest.raises(RecipeError, match=r"--set: transforms: .*unknown transform 'nope'"):
        load_recipe("cpu", ["transforms.nope.enabled=false"])


def test_set_into_a_scalar_is_refused():
    with pytest.raises(RecipeError, match="'max_batch_size' is not a section"):
        load_recipe("cpu", {"runtime.max_batch_size.x": 1})


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- cpu\n- h100\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def test_shipped_recipes_all_validate():
    names = list_recipes()
    assert {"cpu", "h100", "h200", "a100"} <= set(names)
    known = registry()
    for name in names:
        rec = load_recipe(name)
        assert rec.name == name and rec.description
        assert set(rec.transforms) <= set(known)
    assert load_recipe("cpu").runtime.device == "cpu" and load_recipe("cpu").runtime.dtype == "float32"
    for gpu in ("h100", "h200", "a100"):
        rec = load_recipe(gpu)
        assert rec.runtime.device == "cuda" and rec.runtime.dtype == "bfloat16"
        assert max(rec.runtime.cuda_graph_batch_sizes) <= rec.runtime.max_batch_size


def test_every_config_field_is_described():
    classes = [RuntimeConfig, ModelConfig, Recipe, TransformConfig] + [s.config_cls for s in registry().values()]
    for cls in classes:
        for field_name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{field_name} has no description"
        assert cls.model_config.get("extra") == "forbid", f"{cls.__name__} must forbid unknown keys"
