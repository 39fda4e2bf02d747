"""The rank state: a lazy safetensors folder where the names are the model's, each rank reading only
its slices; tied weights resolved; per-expert checkpoints fall back to the whole state on the CPU.

The sharded graph is built for rank 1 of 2 without a process group (the transforms only need the
rank; nothing runs a collective here), then loaded from the lazy state.
"""

from __future__ import annotations

import torch
from safetensors import safe_open

from autodeploy.distributed.checkpoint import LazySafetensors, lazy_state, rank_state
from autodeploy.models.weights import checkpoint_name, load_weights
from tests.helpers.tiny_models import save_tiny


class CountingState(LazySafetensors):
    """Records which tensors were read whole and which in parts."""

    def __init__(self, inner: LazySafetensors):
        super().__init__(inner.files, inner.aliases, inner.dtypes)
        self.whole: list[str] = []
        self.parts: list[str] = []

    def __getitem__(self, name):
        self.whole.append(name)
        return super().__getitem__(name)

    def read_part(self, name, index):
        self.parts.append(name)
        return super().read_part(name, index)


def _prepared(path, **over):
    from autodeploy.api import prepare

    return prepare(str(path), "cpu", {"runtime.dtype": "float32", **over})


def test_lazy_state_of_a_dense_folder(tmp_path):
    src, rec = _prepared(save_tiny("llama", tmp_path / "llama"), **{"runtime.world_size": 2})
    state = lazy_state(src, rec)
    assert isinstance(state, LazySafetensors)
    assert isinstance(rank_state(src, rec, torch.device("cpu")), LazySafetensors)
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(tmp_path / "llama" / "model.safetensors"), "pt") as f:
        whole = f.get_tensor(name)
    assert torch.equal(state.read_part(name, (slice(32, 64),)), whole[32:64])
    assert torch.equal(state.pop(name), whole) and name not in state  # taken once


def test_tied_weights_resolve_to_the_stored_tensor(tmp_path):
    src, rec = _prepared(save_tiny("gemma", tmp_path / "gemma"))
    state = lazy_state(src, rec)
    assert state.aliases["lm_head.weight"] == "model.embed_tokens.weight"
    assert torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])


def test_per_expert_checkpoint_is_read_whole_on_the_cpu(tmp_path):
    """Mixtral's checkpoint stores experts one by one; transformers stacks them: no lazy path."""
    src, rec = _prepared(save_tiny("mixtral", tmp_path / "mixtral"), **{"runtime.world_size": 2})
    assert lazy_state(src, rec) is None
    state = rank_state(src, rec, torch.device("cpu"))
    assert state["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 256, 64)


def test_rank_loads_only_its_slices(tmp_path):
    from autodeploy.api import export_source
    from autodeploy.transforms.pipeline import TransformContext, run_pipeline

    path = save_tiny("llama", tmp_path / "llama")
    src, rec = _prepared(path, **{"runtime.world_size": 2, "transforms.insert_kv_cache.enabled": False})
    gm = export_source(src, rec)
    run_pipeline(gm, TransformContext(recipe=rec, hf_config=src.config, extra={"rank": 1}))
    plan = gm.meta["shard_plan"]
    state = CountingState(lazy_state(src, rec))
    load_weights(gm, state, "cpu")
    sharded = {checkpoint_name(n) for n in plan.param_shards()}
    assert sharded and not sharded & set(state.whole)  # no split tensor was read whole
    assert set(state.whole) == {checkpoint_name(n) for n in plan.replicated}  # the norms
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
        k = f.get_tensor("model.layers.1.self_attn.k_proj.weight")
        down = f.get_tensor("model.layers.1.mlp.down_proj.weight")
    params = dict(gm.named_parameters())
    fused = params["model.model.layers.1.self_attn.fused_q_proj_k_proj_v_proj_weight"]  # fuse_gemms ran after
    assert torch.equal(fused[:32], q[32:64]) and torch.equal(fused[32:48], k[16:32])
    assert torch.equal(params["model.model.layers.1.mlp.down_proj.weight"], down[:, 64:128])


def test_random_sources_initialize_whole(tmp_path):
    from autodeploy.api import prepare

    src, rec = prepare(f"random:{save_tiny('llama', tmp_path / 'llama')}", "cpu",
                       {"runtime.world_size": 2, "runtime.dtype": "float32"})
    assert src.kind == "random" and lazy_state(src, rec) is None
    state = rank_state(src, rec, torch.device("cpu"))  # the same seed on every rank: slices agree
    again = rank_state(src, rec, torch.device("cpu"))
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"], again["model.layers.0.mlp.up_proj.weight"])


def test_hub_model_reads_its_cached_snapshot(tmp_path, monkeypatch):
    """A hub id whose snapshot is in the Hugging Face cache loads lazily from there (no download)."""
    from huggingface_hub import constants

    from autodeploy.models.source import ModelSource
    from autodeploy.recipe import load_recipe
    from tests.helpers.tiny_models import tiny_config

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-llama"
    save_tiny("llama", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    src = ModelSource("acme/tiny-llama", "hub", "acme/tiny-llama", config=tiny_config("llama"),
                      load_kwargs={"local_files_only": True})
    state = lazy_state(src, load_recipe("cpu", {"runtime.dtype": "float32"}))
    assert isinstance(state, LazySafetensors)
    assert state["model.norm.weight"].shape == (64,)
