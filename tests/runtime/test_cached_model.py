"""CachedModel stepping a tiny HF model equals the uncached graph on the whole sequence.

Each architecture is optimized twice through `autodeploy.optimize(dir, "cpu")`: once as shipped
(insert_kv_cache on) and once with insert_kv_cache off, the reference. Three sequences on random
pages then run a schedule mixing chunked prefill, whole prefill and decodes in one step; every
step's last-token logits must match the reference's logits at that position (fp32, 1e-4 relative).
"""

from __future__ import annotations

import pytest
import torch

import autodeploy
from autodeploy.runtime.cached_model import CachedModel, has_kv_cache
from autodeploy.runtime.kv_cache import bytes_per_page
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tiny_models import save_tiny, tiny_config
from tests.helpers.tolerances import assert_close_relative

ARCHS = ["llama", "qwen3", "gemma2", "gemma3_text", "gpt_oss", "mistral", "phi3", "deepseek_v3"]
PAGE = 4
# tokens each sequence advances per step (0: not in the step). Sequence 0: a prefill in two chunks,
# then five decodes; 1: whole prefill joining at step 2; 2: a chunk next to decodes. Over 8 tokens
# long, so the tiny configs' sliding window (8) drops keys.
SCHEDULE = [[7, 0, 0], [5, 9, 3], [1, 1, 6], [1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 0, 0]]


def optimized(arch: str, directory, **settings):
    return autodeploy.optimize(str(directory), "cpu", **settings)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return lambda arch: save_tiny(arch, tmp_path_factory.mktemp(arch))


def run_schedule(cm: CachedModel, seqs: list[list[int]], pages: list[list[int]], reference: list[torch.Tensor]):
    done = [0] * len(seqs)
    for counts in SCHEDULE:
        active = [(i, c) for i, c in enumerate(counts) if c]
        chunks = [(seqs[i][done[i] : done[i] + c], done[i], pages[i]) for i, c in active]
        logits = cm(SequenceInfo.build(chunks, cm.page_size))  # [b, V]
        assert logits.shape == (len(active), reference[0].shape[-1]) and logits.dtype == torch.float32
        for row, (i, c) in enumerate(active):
            done[i] += c
            assert_close_relative(logits[row], reference[i][done[i] - 1])
    assert done == [len(s) for s in seqs]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_steps_match_uncached_graph(arch, model_dir):
    directory = model_dir(arch)
    rt = optimized(arch, directory)
    info = next(i for i in rt.report if i.name == "insert_kv_cache")
    assert has_kv_cache(rt.graph_module), f"insert_kv_cache did not run: {info.warning}"
    assert info.matches == tiny_config(arch).num_hidden_layers and info.details["gather_before_lm_head"]

    lengths = [sum(step[i] for step in SCHEDULE) for i in range(3)]
    gen = torch.Generator().manual_seed(0)
    vocab = tiny_config(arch).vocab_size
    seqs = [torch.randint(vocab, (n,), generator=gen).tolist() for n in lengths]
    ref_rt = optimized(arch, directory, **{"transforms.insert_kv_cache.enabled": False})
    with torch.no_grad():
        reference = [ref_rt.graph_module(torch.tensor([s]), torch.arange(len(s))[None])[0] for s in seqs]  # [L, V]

    num_pages = 16
    cm = CachedModel(rt.graph_module, num_pages=num_pages, page_size=PAGE)
    assert cm.bytes_per_page == bytes_per_page(rt.graph_module.meta["kv_cache_spec"], PAGE)
    perm = torch.randperm(num_pages, generator=gen).tolist()
    need = [-(-n // PAGE) for n in lengths]
    pages = [perm[sum(need[:i]) : sum(need[: i + 1])] for i in range(3)]
    run_schedule(cm, seqs, pages, reference)


def test_bytes_per_page_and_budget():
    from autodeploy.runtime.kv_cache import LayerCacheSpec, allocate_kv_caches, pages_for_budget

    specs = [LayerCacheSpec(2, 16, 16, torch.float32, 8), LayerCacheSpec(4, 24, 16, torch.bfloat16)]
    per_page = 16 * (2 * (16 + 16) * 4 + 4 * (24 + 16) * 2)  # page_size * sum n_kv * (d + d_v) * itemsize
    assert bytes_per_page(specs, 16) == per_page
    assert pages_for_budget(specs, 16, 1.0) == 2**30 // per_page
    caches = allocate_kv_caches(specs, 3, 16, "cpu")
    assert [tuple(c.shape) for c in caches] == [(3, 16, 2, 16), (3, 16, 2, 16), (3, 16, 4, 24), (3, 16, 4, 16)]
    assert [c.dtype for c in caches] == [torch.float32] * 2 + [torch.bfloat16] * 2
    assert sum(c.numel() * c.element_size() for c in caches) == 3 * per_page


def test_budget_too_small_is_a_recipe_error():
    from autodeploy.errors import RecipeError
    from autodeploy.runtime.kv_cache import LayerCacheSpec, pages_for_budget

    with pytest.raises(RecipeError, match="kv_memory_gb"):
        pages_for_budget([LayerCacheSpec(8, 128, 128, torch.float32)], 64, 1e-6)


def test_uncached_graph_is_refused():
    from torch import fx

    from autodeploy.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="insert_kv_cache"):
        CachedModel(fx.symbolic_trace(torch.nn.Linear(2, 2)), num_pages=4, page_size=4)
