"""A one-layer cached graph built by hand: embedding -> q/k/v -> autodeploy::cached_attention -> lm_head.

It has exactly the calling convention insert_kv_cache produces (SequenceInfo.graph_inputs() then
k_cache, v_cache) and real paged attention, so compile / CUDA-graph tests exercise real cache
writes and reads in seconds, without depending on the whole export pipeline.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

import autodeploy.ops  # noqa: F401  (registers autodeploy::cached_attention)
from autodeploy.runtime.cached_model import SPEC_KEY, CachedModel
from autodeploy.runtime.kv_cache import LayerCacheSpec
from autodeploy.runtime.sequence_info import SequenceInfo


class ToyCached(nn.Module):
    def __init__(self, vocab: int = 64, n: int = 4, n_kv: int = 2, d: int = 8):
        super().__init__()
        self.n, self.n_kv, self.d = n, n_kv, d
        h = n * d
        self.emb = nn.Embedding(vocab, h)
        self.freq = nn.Parameter(torch.randn(h) * 0.1)
        self.wq = nn.Linear(h, n * d, bias=False)
        self.wk = nn.Linear(h, n_kv * d, bias=False)
        self.wv = nn.Linear(h, n_kv * d, bias=False)
        self.wo = nn.Linear(n * d, h, bias=False)
        self.head = nn.Linear(h, vocab, bias=False)

    def forward(self, input_ids, position_ids, seq_lens, cu_seqlens, input_pos, cache_lens, page_table,
                slot_mapping, k_cache, v_cache):
        ids, pos = input_ids[0], position_ids[0]  # [T]
        x = self.emb(ids) + torch.sin(pos[:, None].float() * self.freq)  # [T, h]
        T = ids.shape[0]
        q = self.wq(x).view(T, self.n, self.d)
        k = self.wk(x).view(T, self.n_kv, self.d)
        v = self.wv(x).view(T, self.n_kv, self.d)
        o = torch.ops.autodeploy.cached_attention.default(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos,
                                                  cache_lens, page_table, slot_mapping, None, self.d ** -0.5)
        x = x + self.wo(o.reshape(T, self.n * self.d))
        last = x[(cu_seqlens[1:] - 1).long()]  # [b, h]
        return self.head(last)  # [b, V]


def toy_cached_model(num_pages: int, page_size: int, device="cpu", dtype=torch.float32, seed: int = 0) -> CachedModel:
    torch.manual_seed(seed)
    module = ToyCached().to(device=device, dtype=dtype).eval()
    gm = fx.symbolic_trace(module)
    gm.meta[SPEC_KEY] = [LayerCacheSpec(module.n_kv, module.d, module.d, dtype)]
    cm = CachedModel(gm, num_pages, page_size, device)
    # node.meta["val"] on every node, as the export pipeline leaves it (backend selection reads them)
    step = SequenceInfo.build([([1, 2, 3], 0, [0]), ([4], 2, [1])], page_size, num_prefill=1, device=device)
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*step.graph_inputs(), *cm.caches)
    return cm


def greedy_decode(model, prompts: list[list[int]], steps: int, page_size: int, pages_per_seq: int = 8,
                  info_device: str = "cpu"):
    """Prefill all prompts in one step, then `steps` batched decode steps; returns (tokens, logits) per step.

    Sequence i owns pages i * pages_per_seq ... (the model must have enough pages). The metadata
    is built on `info_device` (the host, as the compile backend wants it, or the model's device)."""
    pages = [list(range(i * pages_per_seq, (i + 1) * pages_per_seq)) for i in range(len(prompts))]
    seqs = [list(p) for p in prompts]
    chunks = [(s, 0, pg) for s, pg in zip(seqs, pages)]
    info = SequenceInfo.build(chunks, page_size, num_prefill=len(seqs), device=info_device)
    all_tokens, all_logits = [], []
    for _ in range(steps):
        logits = model.forward(info)  # [b, V]
        toks = logits.argmax(-1).tolist()
        all_tokens.append(toks)
        all_logits.append(logits.detach().float().cpu().clone())
        chunks = []
        for s, pg, t in zip(seqs, pages, toks):
            s.append(t)
            chunks.append(([t], len(s) - 1, pg))
        info = SequenceInfo.build(chunks, page_size, num_prefill=0, device=info_device)
    return all_tokens, all_logits
