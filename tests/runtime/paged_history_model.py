"""A deterministic stand-in for CachedModel, for engine tests that must run in milliseconds.

Instead of K/V it stores (token id, position) per slot of a paged store written through
`slot_mapping`, rebuilds every sequence's whole history from its page table, and draws the logits
from a generator seeded by that history. Any paging mistake — a wrong slot, a stale or shared page
overwritten, a page table out of order — changes the history, so it changes the tokens, and an
unwritten slot or a misplaced position fails loudly.
"""

from __future__ import annotations

import torch

from autodeploy.runtime.cached_model import apply_token_source
from autodeploy.runtime.sequence_info import SequenceInfo


def history_logits(history: list[int], vocab: int) -> torch.Tensor:
    """logits [V] as a pure function of the whole token history."""
    h = 1469598103934665603
    for t in history:
        h = ((h ^ (t + 1)) * 1099511628211) % (1 << 61)
    return torch.randn(vocab, generator=torch.Generator().manual_seed(h)) * 3.0


def reference_greedy(prompt: list[int], max_tokens: int, vocab: int, stop_ids=()) -> list[int]:
    """What greedy decoding must produce for one request alone, computed without any engine."""
    seq, out = list(prompt), []
    while len(out) < max_tokens:
        t = int(history_logits(seq, vocab).argmax())
        seq.append(t)
        out.append(t)
        if t in stop_ids:
            break
    return out


class PagedHistoryModel:
    def __init__(self, num_pages: int, page_size: int, vocab: int = 64):
        self.num_pages, self.page_size, self.vocab = num_pages, page_size, vocab
        self.tokens = torch.full((num_pages * page_size,), -1, dtype=torch.long)
        self.positions = torch.full((num_pages * page_size,), -1, dtype=torch.long)
        self.steps: list[SequenceInfo] = []
        self.bytes_per_page = page_size * 16

    accepts_token_source = True  # like CachedModel: the overlapped engine feeds sampled tokens back

    def forward(self, info: SequenceInfo, token_source=None) -> torch.Tensor:
        if token_source is not None:
            info.input_ids = apply_token_source(info.input_ids, *token_source)
        assert bool((info.input_ids >= 0).all()), "a placeholder token reached the model"
        self.steps.append(info)
        b, ps = info.num_seqs, self.page_size
        assert info.num_prefill + info.num_decode == b
        decodes = info.seq_lens[info.num_prefill :]
        assert bool((decodes == 1).all()) and bool((info.input_pos[info.num_prefill :] > 0).all()), "prefills first"
        assert int(info.cu_seqlens[-1]) == info.num_tokens
        self.tokens[info.slot_mapping] = info.input_ids
        self.positions[info.slot_mapping] = info.position_ids
        rows = []
        for i in range(b):
            n = int(info.cache_lens[i])
            pages = info.page_table[i, : -(-n // ps)].long()
            slots = (pages[:, None] * ps + torch.arange(ps)).flatten()[:n]
            assert bool((self.positions[slots] == torch.arange(n)).all()), f"sequence {i}: KV history out of place"
            rows.append(history_logits(self.tokens[slots].tolist(), self.vocab))
        return torch.stack(rows)  # [b, V]


class CharTokenizer:
    """Token t decodes to one letter; `eos_token_id` decodes to nothing (a special token)."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join("" if t == self.eos_token_id and skip_special_tokens else chr(ord("a") + t % 26) for t in ids)

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") + 1 for c in text]
