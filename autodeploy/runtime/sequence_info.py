"""SequenceInfo: everything one forward step needs to know about the sequences in it.

Prefill chunks and decode tokens of many requests are packed into one flat batch (prefills
first, then decodes), which is what makes in-flight batching one forward call. The runtime fills
it; the graph reads it as inputs; there is no other side channel.

    b = number of sequences in the step, T = total new tokens, P = max pages per sequence

    input_ids      [T]     int64  packed new tokens of all sequences
    position_ids   [T]     int64  absolute position of each new token
    seq_lens       [b]     int32  new tokens per sequence this step (1 for a decode)
    cu_seqlens     [b+1]   int32  prefix sums of seq_lens (sequence i owns tokens cu[i]:cu[i+1])
    input_pos      [b]     int32  tokens already in the KV cache before this step
    cache_lens     [b]     int32  tokens in the KV cache after this step (input_pos + seq_lens)
    page_table     [b, P]  int32  KV page ids of each sequence, in order (unused slots hold 0)
    slot_mapping   [T]     int64  flat KV slot of each new token: page * page_size + offset
    last_token_idx [b]     int64  index into the T tokens of each sequence's last token
    num_prefill            int    sequences 0..num_prefill-1 are prefills (whole or chunked)
    num_decode             int    the rest are single-token decodes
    page_size              int
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch


@dataclass
class SequenceInfo:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens: torch.Tensor
    input_pos: torch.Tensor
    cache_lens: torch.Tensor
    page_table: torch.Tensor
    slot_mapping: torch.Tensor
    last_token_idx: torch.Tensor
    num_prefill: int
    num_decode: int
    page_size: int

    # The tensors the graph takes as inputs, in this order (after input_ids and position_ids).
    GRAPH_INPUTS = ("seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table", "slot_mapping")

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(
        cls,
        chunks: Sequence[tuple[Sequence[int], int, Sequence[int]]],
        page_size: int,
        num_prefill: int | None = None,
        device: torch.device | str = "cpu",
        max_pages: int | None = None,
    ) -> "SequenceInfo":
        """chunks: per sequence (new token ids, input_pos, page ids covering input_pos + len(new)).

        Prefills must come first; `num_prefill` defaults to the count of chunks that are not a
        single token continuing a cached sequence.
        """
        if num_prefill is None:
            num_prefill = sum(1 for toks, pos, _ in chunks if not (len(toks) == 1 and pos > 0))
        ids, pos_ids, slots = [], [], []
        seq_lens, input_pos = [], []
        width = max_pages or max((len(p) for _, _, p in chunks), default=1) or 1
        table = torch.zeros(len(chunks), width, dtype=torch.int32)
        for i, (toks, start, pages) in enumerate(chunks):
            n = len(toks)
            need = (start + n + page_size - 1) // page_size
            if len(pages) < need:
                raise ValueError(f"sequence {i}: {len(pages)} pages cannot hold {start + n} tokens")
            ids.extend(int(t) for t in toks)
            pos_ids.extend(range(start, start + n))
            slots.extend(int(pages[p // page_size]) * page_size + p % page_size for p in range(start, start + n))
            seq_lens.append(n)
            input_pos.append(start)
            table[i, : len(pages)] = torch.tensor(list(pages), dtype=torch.int32)
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
        cu = torch.zeros(len(chunks) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(seq_lens_t, 0)
        input_pos_t = torch.tensor(input_pos, dtype=torch.int32)
        info = cls(
            input_ids=torch.tensor(ids, dtype=torch.long),
            position_ids=torch.tensor(pos_ids, dtype=torch.long),
            seq_lens=seq_lens_t,
            cu_seqlens=cu,
            input_pos=input_pos_t,
            cache_lens=input_pos_t + seq_lens_t,
            page_table=table,
            slot_mapping=torch.tensor(slots, dtype=torch.long),
            last_token_idx=(cu[1:] - 1).long(),
            num_prefill=num_prefill,
            num_decode=len(chunks) - num_prefill,
            page_size=page_size,
        )
        return info.to(device)

    def to(self, device: torch.device | str) -> "SequenceInfo":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return SequenceInfo(**kw)

    def graph_inputs(self) -> tuple[torch.Tensor, ...]:
        """input_ids [1, T], position_ids [1, T], then GRAPH_INPUTS — what a cached graph is called with."""
        return (self.input_ids[None], self.position_ids[None]) + tuple(getattr(self, n) for n in self.GRAPH_INPUTS)
