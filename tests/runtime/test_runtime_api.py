"""The Runtime surface: generate (all prompts in flight), submit with sync / async streaming,
cancel, chat, metrics, per-request failures; then end to end against transformers `generate`
for every tiny architecture and (slow) SmolLM2."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

import autodeploy
from autodeploy.errors import RequestError
from autodeploy.recipe import load_recipe
from autodeploy.runtime.cached_model import CachedModel
from autodeploy.runtime.request import Request
from autodeploy.runtime.runtime import Runtime
from autodeploy.runtime.sampling import SamplingParams
from tests.helpers.tiny_models import ARCHS, save_tiny
from tests.runtime.paged_history_model import CharTokenizer, PagedHistoryModel, reference_greedy

VOCAB = 64


class ChatTokenizer(CharTokenizer):
    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        text = "".join(f"{m['role'][0]}{m['content']}" for m in messages) + ("a" if add_generation_prompt else "")
        return {"input_ids": self.encode(text)}


def double_runtime(tokenizer=None, num_pages=32, **runtime) -> Runtime:
    """A Runtime over the paged history double: the API without an export."""
    rec = load_recipe("cpu", {f"runtime.{k}": v for k, v in (dict(max_seq_len=128) | runtime).items()})
    cfg = SimpleNamespace(vocab_size=VOCAB, eos_token_id=None)
    model = PagedHistoryModel(num_pages, rec.runtime.kv_page_size, VOCAB)
    return Runtime(None, tokenizer, rec, None, cfg, model=model)


def prompt(n, start=1):
    return [(start + 5 * i) % (VOCAB - 1) + 1 for i in range(n)]


# ---- the API over the double -------------------------------------------------------------------
def test_generate_batches_all_prompts_and_keeps_their_order():
    rt = double_runtime(kv_page_size=4)
    prompts = [prompt(n, n) for n in (3, 20, 1, 9)]
    outs = rt.generate(prompts, SamplingParams(max_tokens=7))
    assert [o.token_ids for o in outs] == [reference_greedy(p, 7, VOCAB) for p in prompts]
    assert max(s.num_seqs for s in rt.model.steps) == 4  # one forward serves all of them
    single = rt.generate(prompts[1], SamplingParams(max_tokens=7))
    assert len(single) == 1 and single[0].token_ids == outs[1].token_ids


def test_generate_takes_sampling_per_prompt():
    rt = double_runtime()
    outs = rt.generate([prompt(4), prompt(4)], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=5)])
    assert [len(o.token_ids) for o in outs] == [2, 5]
    with pytest.raises(RequestError, match="2 sampling params for 1 prompts"):
        rt.generate([prompt(4)], [SamplingParams(), SamplingParams()])


def test_bad_prompts_fail_alone():
    rt = double_runtime(max_seq_len=16)
    outs = rt.generate(["text without a tokenizer", prompt(40), prompt(5), [VOCAB + 1]], SamplingParams(max_tokens=4))
    assert [o.finish_reason for o in outs] == ["error", "error", "length", "error"]
    assert "no tokenizer" in outs[0].error and "max_seq_len 16" in outs[1].error and "vocabulary" in outs[3].error
    assert outs[2].token_ids == reference_greedy(prompt(5), 4, VOCAB)


def test_submit_streams_tokens_and_text_synchronously():
    tok = CharTokenizer()
    rt = double_runtime(tokenizer=tok)
    h = rt.submit("hello", SamplingParams(max_tokens=6))
    deltas = list(h)
    expected = reference_greedy(tok.encode("hello"), 6, VOCAB)
    assert [t for d in deltas for t in d.token_ids] == expected
    assert "".join(d.text for d in deltas) == tok.decode(expected)
    assert deltas[-1].finished and deltas[-1].finish_reason == "length" and not any(d.finished for d in deltas[:-1])
    out = h.result()
    assert out.token_ids == expected and out.prompt == "hello" and h.done


def test_async_streams_run_concurrently():
    rt = double_runtime()
    prompts = [prompt(n, n) for n in (2, 6, 11)]

    async def consume(h):
        seen = []
        async for d in h:
            seen.extend(d.token_ids)
        return seen

    async def main():
        handles = [rt.submit(p, SamplingParams(max_tokens=5 + i)) for i, p in enumerate(prompts)]
        return await asyncio.gather(*(consume(h) for h in handles))

    got = asyncio.run(main())
    assert got == [reference_greedy(p, 5 + i, VOCAB) for i, p in enumerate(prompts)]
    assert max(s.num_seqs for s in rt.model.steps) == 3  # the consumers shared steps


def test_async_result():
    rt = double_runtime()
    out = asyncio.run(rt.submit(prompt(5), SamplingParams(max_tokens=3)).aresult())
    assert out.token_ids == reference_greedy(prompt(5), 3, VOCAB)


def test_cancel_mid_stream_frees_pages_and_ends_the_stream():
    rt = double_runtime(kv_page_size=4)
    h = rt.submit(prompt(10), SamplingParams(max_tokens=50))
    other = rt.submit(prompt(3), SamplingParams(max_tokens=4))
    it = iter(h)
    first = next(it)
    assert first.token_ids and rt.metrics()["kv_pages_used"] > 0
    assert rt.cancel(h)
    assert rt.metrics()["kv_pages_used"] == len(other.request.pages)
    rest = list(it)
    assert rest[-1].finished and rest[-1].finish_reason == "cancelled"
    assert not rt.cancel(h) and not h.cancel()
    assert other.result().finish_reason == "length"
    assert rt.metrics()["kv_pages_used"] == 0


def test_submit_a_request_object_with_priority():
    rt = double_runtime(max_batch_size=1)
    rt.scheduler_policy = "priority"
    low = rt.submit(Request(prompt(3), SamplingParams(max_tokens=2), priority=5))
    high = rt.submit(prompt(4), SamplingParams(max_tokens=2), priority=0, request_id="urgent")
    assert high.request_id == "urgent"
    rt.step()
    assert high.request.num_computed > 0 and low.request.num_computed == 0
    assert low.result().ok and high.result().ok


def test_chat_applies_the_template():
    tok = ChatTokenizer()
    rt = double_runtime(tokenizer=tok)
    messages = [{"role": "user", "content": "hi"}]
    out = rt.chat(messages, SamplingParams(max_tokens=4))
    assert out.prompt_token_ids == tok.encode("uhia")
    assert out.token_ids == reference_greedy(tok.encode("uhia"), 4, VOCAB)
    with pytest.raises(RequestError, match="no chat template"):
        double_runtime(tokenizer=CharTokenizer()).chat(messages)


def test_metrics_show_pages_queue_and_prefix_hits():
    rt = double_runtime(kv_page_size=4, enable_prefix_caching=True, max_batch_size=1)
    shared = prompt(16)
    handles = [rt.submit(shared + [i + 1], SamplingParams(max_tokens=2)) for i in range(3)]
    rt.step()
    m = rt.metrics()
    assert (m["num_running"], m["num_waiting"]) == (1, 2) and m["kv_pages_used"] == 5
    for h in handles:
        h.result()
    m = rt.metrics()
    assert m["prefix_cache_hits"] == 8  # the two later requests reused 4 full pages each
    assert m["kv_pages_used"] == 0 and m["kv_pages_free"] == m["kv_pages_total"] == 32
    assert m["finished"] == {"length": 3}


# ---- end to end against transformers -----------------------------------------------------------
def hf_model(directory):
    """Eager transformers on the same weights; MoE experts through batched_mm, as the cpu recipe exports them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {}
    cls = AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(directory))]
    if cls._can_set_experts_implementation():
        kw["experts_implementation"] = "batched_mm"
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()


def hf_greedy(model, prompts, n):
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0)
        out.append(gen[0, len(p):].tolist())
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(arch, tmp_path):
    save_tiny(arch, tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", max_seq_len=128, kv_num_pages=24, kv_page_size=4, max_num_tokens=32)
    vocab = rt.hf_config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (3, 17, 40)]
    outs = rt.generate(prompts, SamplingParams(max_tokens=32, min_tokens=32))  # as HF min_new_tokens
    expected = hf_greedy(hf_model(tmp_path), prompts, 32)
    assert [o.token_ids for o in outs] == expected
    # a cache-inserted graph runs as the CachedModel over the paged pool, else the uncached graph does
    cached = next(i for i in rt.report if i.name == "insert_kv_cache").changed
    assert isinstance(rt.model, CachedModel) == cached
    # 24 pages of 4 tokens hold 96 of the 153 KV tokens the three need: preemption happened, tokens exact
    assert rt.metrics()["num_preemptions"] > 0


def test_uncached_graph_runs_behind_the_same_engine(tmp_path):
    from autodeploy.runtime.runtime import RecomputeModel

    save_tiny("llama", tmp_path)
    rt = autodeploy.optimize(str(tmp_path), "cpu", max_seq_len=128, kv_num_pages=24, kv_page_size=4,
                             **{"transforms.insert_kv_cache.enabled": False})
    assert isinstance(rt.model, RecomputeModel)
    prompts = [[5, 6, 7], list(range(20, 45))]
    outs = rt.generate(prompts, SamplingParams(max_tokens=16, min_tokens=16))
    assert [o.token_ids for o in outs] == hf_greedy(hf_model(tmp_path), prompts, 16)


# ---- SmolLM2 (the real example model) ----------------------------------------------------------
SMOL_PROMPTS = ["The capital of France is", "Here is a short poem about the sea:\n",
                "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]


@pytest.fixture(scope="module")
def smollm2():
    return autodeploy.optimize("example:smollm2", "cpu", max_seq_len=256, max_num_tokens=64)


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    rt = smollm2
    prompts = [rt.encode(p) for p in SMOL_PROMPTS]
    assert len({len(p) for p in prompts}) == 3  # different lengths, submitted together
    outs = rt.generate(SMOL_PROMPTS, SamplingParams(max_tokens=32, min_tokens=32))  # as min_new_tokens
    hf = AutoModelForCausalLM.from_pretrained(rt.source.location, gguf_file=rt.source.gguf_file, dtype=torch.float32)
    assert [o.token_ids for o in outs] == hf_greedy(hf.eval(), prompts, 32)
    assert [o.text for o in outs] == [rt.decode(o.token_ids) for o in outs]


@pytest.mark.slow
def test_smollm2_streams_text_and_chats(smollm2):
    rt = smollm2
    h = rt.submit(SMOL_PROMPTS[1], SamplingParams(max_tokens=24, ignore_eos=True))
    deltas = list(h)
    out = h.request.output()
    assert "".join(d.text for d in deltas) == out.text == rt.decode(out.token_ids)
    answer = rt.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(max_tokens=24))
    assert answer.ok and "Paris" in answer.text
