"""The compile backend on a GPU: CUDA-graph decode buckets against the eager path, padding safety,
one host-to-device copy per step, and the whole pipeline on a tiny Llama (greedy tokens match)."""

from __future__ import annotations

import pytest
import torch

from autodeploy.runtime.compile import CompiledModel
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tolerances import assert_close
from tests.runtime.toy_cached_graph import greedy_decode, toy_cached_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PAGES, PAGE = 64, 4
BUCKETS = [1, 2, 4, 8]


@pytest.fixture(scope="module")
def graphed():
    """One toy model compiled with CUDA graphs for buckets 1..8 (one compile for the file)."""
    return CompiledModel(toy_cached_model(PAGES, PAGE, "cuda"), "cuda-graph", batch_sizes=BUCKETS, max_batch_size=8,
                         max_num_tokens=256, max_seq_len=64)


def _prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_every_bucket_is_captured_and_the_pad_page_is_reserved(graphed):
    assert sorted(graphed.graphs) == [2, 4, 8]  # a batch of one replays bucket 2
    assert graphed.num_pages == PAGES - 1 and graphed.pad_page == PAGES - 1
    assert graphed.capture_seconds > 0


def _decode_matches_eager(model, n: int, seed: int, steps: int) -> int:
    """Greedy-decode n prompts `steps` tokens with the model and with the eager one: the same tokens and
    logits. Returns how many CUDA-graph replays the model served meanwhile."""
    prompts = _prompts(n, seed=seed)
    eager = toy_cached_model(PAGES, PAGE, "cuda")
    want_tokens, want_logits = greedy_decode(eager, prompts, steps, PAGE, pages_per_seq=7)
    replays = model.replays
    tokens, logits = greedy_decode(model, prompts, steps, PAGE, pages_per_seq=7)
    assert tokens == want_tokens
    for a, b in zip(logits, want_logits):
        assert_close(a, b)
    return model.replays - replays


@pytest.mark.parametrize("batch", [1, 3, 5, 8])
def test_graph_decode_matches_eager(graphed, batch):
    """b = 1, 3 and 5 replay the 2, 4 and 8 buckets with padding; tokens and logits match the eager model."""
    assert _decode_matches_eager(graphed, batch, seed=batch, steps=8) == 7  # every decode step (the first: prefill)


def test_metadata_built_on_the_device_replays_the_same_graphs(graphed):
    """The engine may build SequenceInfo on the GPU: device-side packing, same buckets, same tokens."""
    prompts = _prompts(3, seed=21)
    want, _ = greedy_decode(toy_cached_model(PAGES, PAGE, "cuda"), prompts, 6, PAGE, pages_per_seq=7)
    copies, replays = graphed.meta.copies, graphed.replays
    got, _ = greedy_decode(graphed, prompts, 6, PAGE, pages_per_seq=7, info_device="cuda")
    assert got == want
    assert graphed.replays - replays == 5 and graphed.meta.copies == copies  # no host round trip


def test_padding_never_writes_live_pages(graphed):
    eager = toy_cached_model(PAGES, PAGE, "cuda")
    for c in graphed.caches:  # the module-scoped model holds earlier tests' tokens in slots this test never writes
        c.zero_()
    for c in eager.caches:
        c.zero_()
    prompts = _prompts(3, seed=11)  # bucket 4: one padding sequence per decode step
    greedy_decode(eager, prompts, 6, PAGE, pages_per_seq=7)
    greedy_decode(graphed, prompts, 6, PAGE, pages_per_seq=7)
    live = slice(0, 3 * 7)  # the pages the three sequences own
    for c_graph, c_eager in zip(graphed.caches, eager.caches):
        assert_close(c_graph[live], c_eager[live])


def test_one_host_to_device_copy_per_step(graphed):
    before = graphed.meta.copies
    greedy_decode(graphed, _prompts(2, seed=5), 5, PAGE, pages_per_seq=7)
    assert graphed.meta.copies - before == 5
    assert graphed.meta.host.is_pinned()


def test_graph_reads_metadata_from_fixed_addresses(graphed):
    a = graphed.pack(SequenceInfo.build([([1], 3, [0]), ([2], 5, [1, 2])], PAGE, num_prefill=0), pad_to=4)
    b = graphed.pack(SequenceInfo.build([([7], 1, [5]), ([9], 9, [6, 7, 8])], PAGE, num_prefill=0), pad_to=4)
    for name in ("input_ids", "position_ids", "page_table", "slot_mapping", "cache_lens"):
        assert getattr(a.info, name).data_ptr() == getattr(b.info, name).data_ptr(), name


def test_triton_cached_attention_replaces_the_reference_on_cuda(graphed):
    targets = {n.target for n in graphed.cached.gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.autodeploy.triton_cached_attention.default in targets
    assert torch.ops.autodeploy.cached_attention.default not in targets


def _tiny_llama_tokens(tmp_path, backend: str, device: str, n: int = 32) -> list[list[int]]:
    from autodeploy.profiler.bench import build_runtime
    from autodeploy.runtime.sampling import SamplingParams
    from tests.helpers.tiny_models import save_tiny

    d = tmp_path / "tiny"
    if not d.exists():
        save_tiny("llama", d)
    overrides = [f"runtime.device={device}", "runtime.dtype=float32", f"runtime.compile_backend={backend}",
                 "runtime.max_batch_size=4", "runtime.max_seq_len=128", "runtime.max_num_tokens=256",
                 "runtime.kv_page_size=16", "runtime.kv_num_pages=64", "runtime.cuda_graph_batch_sizes=[1,2,4]"]
    rt = build_runtime(str(d), "h100" if device == "cuda" else "cpu", overrides)
    prompts = [[5, 17, 33, 2, 9], [100, 3], [44, 45, 46, 47, 48, 49, 50]]
    outs = rt.generate(prompts, SamplingParams(max_tokens=n, ignore_eos=True))
    assert all(o.error is None for o in outs), [o.error for o in outs]
    return [o.token_ids for o in outs], rt


def test_tiny_llama_cuda_graph_tokens_match_eager_and_cpu(tmp_path):
    graph_tokens, rt = _tiny_llama_tokens(tmp_path, "cuda-graph", "cuda")
    eager_tokens, _ = _tiny_llama_tokens(tmp_path, "eager", "cuda")
    cpu_tokens, _ = _tiny_llama_tokens(tmp_path, "eager", "cpu")
    assert graph_tokens == eager_tokens
    assert graph_tokens == cpu_tokens
    assert getattr(rt.model, "replays", 0) > 0  # the decode steps really went through the graphs


def test_capture_without_torch_compile_matches_eager():
    """runtime.torch_compile false: the transformed graph captured as is, same tokens and logits."""
    model = CompiledModel(toy_cached_model(PAGES, PAGE, "cuda"), "cuda-graph", batch_sizes=BUCKETS, max_batch_size=8,
                          max_num_tokens=256, max_seq_len=64, torch_compile=False)
    assert sorted(model.graphs) == [1, 2, 4, 8]  # captured as is: a bucket of one too
    assert _decode_matches_eager(model, 3, seed=5, steps=8) == 7


def test_a_graph_captured_as_is_has_a_bucket_of_one():
    """Without torch.compile nothing specializes on b = 1: a batch of one replays bucket 1 (no padding row),
    with the eager model's tokens and logits."""
    model = CompiledModel(toy_cached_model(PAGES, PAGE, "cuda"), "cuda-graph", batch_sizes=[1, 2, 4], max_batch_size=4,
                          max_num_tokens=256, max_seq_len=64, torch_compile=False)
    assert sorted(model.graphs) == [1, 2, 4]
    assert _decode_matches_eager(model, 1, seed=3, steps=6) == 5
