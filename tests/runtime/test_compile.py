"""The compile backend on the CPU: single-copy metadata packing, bucket padding, torch.compile.

CUDA graphs themselves are exercised in tests/gpu/test_compile_cuda_graphs.py.
"""

from __future__ import annotations

import pytest
import torch

from autodeploy.recipe import load_recipe
from autodeploy.runtime.compile import CompiledModel, compile_model
from autodeploy.runtime.compile.buckets import bucket_for, is_decode_only, normalize_buckets
from autodeploy.runtime.compile.metadata import MetadataBuffers, layout
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tolerances import assert_close
from tests.runtime.toy_cached_graph import greedy_decode, toy_cached_model

FIELDS = ("input_ids", "position_ids", "seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table",
          "slot_mapping", "last_token_idx")
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]


def _mixed_step() -> SequenceInfo:
    # one prefill chunk of 3 tokens, one chunked-prefill continuation, one decode
    return SequenceInfo.build([([5, 6, 7], 0, [3]), ([1, 2], 4, [0, 2]), ([9], 6, [4, 1])], page_size=4, num_prefill=2)


def test_pack_round_trips_every_field_in_one_copy():
    info = _mixed_step()
    buf = MetadataBuffers(max_tokens=32, max_seqs=8, max_pages=4, device="cpu")
    packed = buf.pack(info, temperature=[0.0, 0.5, 1.5])
    assert buf.copies == 1
    for f in FIELDS:
        got, want = getattr(packed.info, f), getattr(info, f)
        assert got.dtype == want.dtype and torch.equal(got, want), f
    assert packed.info.num_prefill == 2 and packed.info.num_decode == 1 and packed.info.page_size == 4
    assert torch.equal(packed.temperature, torch.tensor([0.0, 0.5, 1.5]))
    # every view lies inside the one device buffer
    base, end = buf.dev.data_ptr(), buf.dev.data_ptr() + buf.dev.numel()
    for f in FIELDS:
        t = getattr(packed.info, f)
        assert base <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= end, f


def test_same_shape_reuses_the_same_addresses():
    buf = MetadataBuffers(32, 8, 4, "cpu")
    a = buf.pack(_mixed_step())
    ptrs = {f: getattr(a.info, f).data_ptr() for f in FIELDS}
    b = buf.pack(SequenceInfo.build([([1, 1, 1], 0, [5]), ([3, 3], 1, [6]), ([2], 9, [7, 8, 9])], 4, num_prefill=2))
    assert {f: getattr(b.info, f).data_ptr() for f in FIELDS} == ptrs
    assert buf.copies == 2
    assert torch.equal(b.info.input_ids, torch.tensor([1, 1, 1, 3, 3, 2]))  # the new step's values


def test_layout_offsets_are_aligned_and_disjoint():
    spec, total = layout(T=7, b=3, P=5)
    spans = sorted((off, off + n * torch.empty((), dtype=dt).element_size()) for off, dt, n in spec.values())
    assert all(off % 16 == 0 for off, _ in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= total


def test_decode_padded_to_bucket_points_padding_at_the_pad_page():
    info = SequenceInfo.build([([9], 4, [1, 2]), ([3], 7, [4, 5])], page_size=4, num_prefill=0)
    buf = MetadataBuffers(16, 8, 6, "cpu")
    p = buf.pack(info, temperature=[0.7, 0.0], pad_to=4, pad_page=7, page_cols=6).info
    assert p.num_seqs == 4 and p.num_tokens == 4 and p.num_decode == 4 and p.num_prefill == 0
    assert p.input_ids.tolist() == [9, 3, 0, 0]
    assert p.seq_lens.tolist() == [1, 1, 1, 1]
    assert p.cu_seqlens.tolist() == [0, 1, 2, 3, 4]
    assert p.input_pos.tolist() == [4, 7, 0, 0] and p.cache_lens.tolist() == [5, 8, 1, 1]
    assert p.page_table.tolist() == [[1, 2, 0, 0, 0, 0], [4, 5, 0, 0, 0, 0], [7] * 6, [7] * 6]
    assert p.slot_mapping.tolist() == [8, 23, 28, 28]  # pad tokens write slot 0 of page 7
    assert p.last_token_idx.tolist() == [0, 1, 2, 3]


def test_mixed_step_padded_with_one_token_sequences():
    """torch.compile pads b = 1 / T = 1 steps: the padding goes after the real tokens and sequences."""
    p = MetadataBuffers(16, 8, 6, "cpu").pack(_mixed_step(), pad_to=4, pad_page=7, page_cols=3).info
    assert p.num_seqs == 4 and p.num_tokens == 7 and (p.num_prefill, p.num_decode) == (2, 2)
    assert p.input_ids.tolist() == [5, 6, 7, 1, 2, 9, 0]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 6, 7]
    assert p.last_token_idx.tolist() == [2, 4, 5, 6]
    assert p.slot_mapping.tolist()[-1] == 28 and p.page_table.tolist()[-1] == [7, 7, 7]


@pytest.mark.parametrize("pad_to", [None, 5])
def test_device_side_packing_matches_the_host_copy(pad_to):
    """SequenceInfo already on the device: same views, same padding, without the host round trip."""
    info = _mixed_step() if pad_to is None else SequenceInfo.build(
        [([9], 4, [1, 2]), ([3], 7, [4, 5]), ([8], 1, [6])], page_size=4, num_prefill=0)
    host = MetadataBuffers(16, 8, 6, "cpu").pack(info, pad_to=pad_to, pad_page=7, page_cols=6)
    buf = MetadataBuffers(16, 8, 6, "cpu")
    dev = buf.pack_device(info, pad_to=pad_to, pad_page=7, page_cols=6)
    for f in FIELDS:
        assert torch.equal(getattr(dev.info, f), getattr(host.info, f)), f
    assert (dev.info.num_prefill, dev.info.num_decode) == (host.info.num_prefill, host.info.num_decode)
    assert buf.copies == 0  # no host-to-device copy was issued


def test_token_source_rides_in_the_metadata_copy():
    info = _mixed_step()
    buf = MetadataBuffers(16, 8, 6, "cpu")
    packed = buf.pack(info, pad_to=4, page_cols=3, token_source=torch.tensor([-1, -1, -1, -1, -1, 1]))
    assert buf.copies == 1
    assert packed.token_source.tolist() == [-1, -1, -1, -1, -1, 1, -1]  # the padding token reads input_ids
    assert buf.pack(info).token_source.tolist() == [-1] * 6  # no placeholders
    assert buf.pack_device(info, pad_to=4).token_source.tolist() == [-1] * 7


def test_graph_step_substitutes_placeholders_like_the_eager_path():
    """What a decode CUDA graph holds (CompiledModel._graph_step) on the CPU: a placeholder's input id comes
    from the fixed prev_tokens buffer, and the logits are those of the eager token-source path."""
    model = CompiledModel(toy_cached_model(40, 4), "eager")
    prefill = SequenceInfo.build([(PROMPTS[0], 0, [0, 1]), (PROMPTS[1], 0, [2, 3])], 4, num_prefill=2)
    model.forward(prefill)
    decode = SequenceInfo.build([([-1], 3, [0, 1]), ([12], 6, [2, 3])], 4, num_prefill=0)
    prev, source = torch.tensor([21, 37]), torch.tensor([1, -1])  # token 0 is the previous step's row 1
    model.meta.prev_tokens[:2].copy_(prev)
    packed = model.meta.pack(decode, pad_to=2, page_cols=model.max_pages, token_source=source)
    got = model._graph_step(packed)
    assert packed.info.input_ids.tolist() == [37, 12]
    want = toy_cached_model(40, 4)
    want.forward(prefill)
    assert torch.equal(got, want.forward(SequenceInfo.build([([37], 3, [0, 1]), ([12], 6, [2, 3])], 4, num_prefill=0)))


def test_bucket_choice():
    assert normalize_buckets([1, 2, 4, 8, 16, 32], max_batch_size=12) == [1, 2, 4, 8, 12]
    assert normalize_buckets([4, 1, 2, 2], max_batch_size=8) == [1, 2, 4]
    buckets = [1, 2, 4, 8]
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    assert is_decode_only(0, 5, 5) and not is_decode_only(1, 5, 5) and not is_decode_only(0, 6, 5)


def test_padding_sequences_leave_live_kv_pages_untouched():
    """The same decode step with and without two padding sequences: same logits, same live pages."""
    page_size, pad_page = 4, 39
    ref, padded = toy_cached_model(40, page_size), toy_cached_model(40, page_size)
    prefill = SequenceInfo.build([(PROMPTS[0], 0, [0, 1]), (PROMPTS[1], 0, [2, 3])], page_size, num_prefill=2)
    ref.forward(prefill)
    padded.forward(prefill)
    decode = SequenceInfo.build([([11], 3, [0, 1]), ([12], 6, [2, 3])], page_size, num_prefill=0)
    want = ref.forward(decode)
    buf = MetadataBuffers(16, 8, 8, "cpu")
    got = padded.forward(buf.pack(decode, pad_to=4, pad_page=pad_page, page_cols=8).info)
    assert got.shape[0] == 4
    assert_close(got[:2], want)
    for c_ref, c_pad in zip(ref.caches, padded.caches):
        # every page but the pad page (a stray pad write would replace a slot with another token's k/v;
        # batch-size rounding of the real tokens' projections stays within the fp32 tolerance)
        assert_close(c_pad[:pad_page], c_ref[:pad_page])
        assert c_pad[pad_page].abs().sum() > 0  # the padding wrote somewhere: its own page


def test_eager_backend_matches_cached_model_and_copies_once_per_step():
    ref_tokens, ref_logits = greedy_decode(toy_cached_model(40, 4), PROMPTS, 6, 4)
    model = CompiledModel(toy_cached_model(40, 4), "eager")
    tokens, logits = greedy_decode(model, PROMPTS, 6, 4)
    assert tokens == ref_tokens
    for a, b in zip(logits, ref_logits):
        assert torch.equal(a, b)
    assert model.meta.copies == 6


def test_cuda_graph_backend_without_a_gpu_compiles_only():
    model = CompiledModel(toy_cached_model(40, 4), "cuda-graph", compile_fn=lambda gm: gm)
    assert not model.use_graphs and model.graphs == {}
    assert model.num_pages == 39 and model.pad_page == 39  # compiled: b = 1 steps are padded there
    tokens, _ = greedy_decode(model, PROMPTS, 3, 4)
    assert tokens == greedy_decode(toy_cached_model(40, 4), PROMPTS, 3, 4)[0]


def test_cuda_graph_backend_without_torch_compile_runs_the_graph_as_is():
    cached = toy_cached_model(40, 4)
    model = CompiledModel(cached, "cuda-graph", torch_compile=False,
                          compile_fn=lambda gm: pytest.fail("torch_compile=False must not compile"))
    assert model.fn is cached.gm and not model.torch_compile
    tokens, _ = greedy_decode(model, PROMPTS, 3, 4)
    assert tokens == greedy_decode(toy_cached_model(40, 4), PROMPTS, 3, 4)[0]
    rt = load_recipe("h100", overrides={"runtime.torch_compile": False, "runtime.device": "cpu"}).runtime
    assert not compile_model(toy_cached_model(8, 4), rt).torch_compile


def test_compile_model_follows_the_recipe():
    cached = toy_cached_model(8, 4)
    assert compile_model(cached, load_recipe("cpu").runtime) is cached  # eager on the CPU: nothing to wrap
    with pytest.raises(ValueError, match="unknown compile backend"):
        CompiledModel(cached, "tensorrt")


PIPELINE_PROMPTS = [[5, 17, 33, 2, 9], [100, 3], [44, 45, 46, 47, 48, 49, 50]]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.helpers.tiny_models import save_tiny

    return str(save_tiny("llama", tmp_path_factory.mktemp("tiny_llama")))


def _generate(model_dir: str, **settings):
    import autodeploy
    from autodeploy.runtime.sampling import SamplingParams

    rt = autodeploy.optimize(model_dir, "cpu", **settings)
    outs = rt.generate(PIPELINE_PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True, logprobs=True))
    assert all(o.error is None for o in outs), [o.error for o in outs]
    return rt, outs


def test_torch_compile_backend_through_the_pipeline_matches_eager(tiny_llama):
    """The one Inductor compile of this file: a tiny Llama, exported, cache-inserted, compiled with
    dynamic shapes (prefill and batched decode through one graph); greedy tokens equal eager's."""
    eager_rt, want = _generate(tiny_llama)
    rt, got = _generate(tiny_llama, compile_backend="torch-compile")
    assert isinstance(rt.model, CompiledModel) and rt.model.backend == "torch-compile"
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for a, b in zip(got, want):
        assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))
    assert rt.model.meta.copies == eager_rt.engine.num_steps  # one metadata copy per step
