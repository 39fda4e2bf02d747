"""Per-layer decode attention: the unfused Triton path (4 launches) vs the fused kernel (1 launch).

    PYTHONPATH=$PWD python3 benchmarks/decode_attention_bench.py [--layers 16] [--max-seq-len 8192] [--sweep]

Llama-3.2-1B shape (32 q heads, 8 KV heads, head dim 64, page size 64, bf16), batch 1 and 16,
contexts 128 / 384 / 1024 / 4096. Per case, what one decoder layer launches:

  old     autodeploy::triton_rope (out of place, what select_backends picks) on q / k views of a fused
          qkv output, then autodeploy::triton_cached_attention: kv write + decode (+ split merge)
  fused   autodeploy::triton_cached_attention_rope: one kernel (rope, kv write, attention, merge)

Both are timed as the runtime runs them: `--layers` calls (each layer its own KV cache, so the
caches do not sit in L2 as one reused cache would) captured in one CUDA graph, replayed with
triton.testing.do_bench; the table gives microseconds per layer. The page table is as wide as the
runtime's CUDA-graph buckets make it (max_seq_len / page size columns): the split count depends on it.
Every case first checks the fused output and cache against the old path's (bf16 tolerance).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BF16 = torch.bfloat16
N, N_KV, D, PAGE = 32, 8, 64, 64
CASES = [(b, ctx) for b in (1, 16) for ctx in (128, 384, 1024, 4096)]


def _replay_us(fn, calls: int) -> float:
    """Median microseconds of one of the `calls` calls that fn() makes, replayed from a CUDA graph."""
    import triton.testing

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=10, rep=100, return_mode="median") * 1e3 / calls


class Case:
    """b decodes at context ctx; `layers` KV caches with shuffled pages; q / k / v views of one qkv."""

    def __init__(self, b: int, ctx: int, layers: int, max_seq_len: int):
        self.b, self.ctx, self.layers = b, ctx, layers
        per_seq = -(-ctx // PAGE)
        num_pages = b * per_seq + 1
        cols = max(per_seq, max_seq_len // PAGE)
        perm = torch.randperm(num_pages - 1)[: b * per_seq].view(b, per_seq)
        self.page_table = torch.zeros(b, cols, dtype=torch.int32)
        self.page_table[:, :per_seq] = perm.int()
        pos = ctx - 1
        self.slot_mapping = (self.page_table[:, pos // PAGE].long() * PAGE + pos % PAGE)
        self.seq_lens = torch.ones(b, dtype=torch.int32)
        self.cu_seqlens = torch.arange(b + 1, dtype=torch.int32)
        self.input_pos = torch.full((b,), pos, dtype=torch.int32)
        self.cache_lens = torch.full((b,), ctx, dtype=torch.int32)
        for name in ("page_table", "slot_mapping", "seq_lens", "cu_seqlens", "input_pos", "cache_lens"):
            setattr(self, name, getattr(self, name).cuda())
        self.caches = [(torch.randn(num_pages, PAGE, N_KV, D, device="cuda").to(BF16),
                        torch.randn(num_pages, PAGE, N_KV, D, device="cuda").to(BF16)) for _ in range(layers)]
        qkv = torch.randn(b, (N + 2 * N_KV) * D, device="cuda").to(BF16)  # the fused projection's output
        q, k, v = qkv.split([N * D, N_KV * D, N_KV * D], -1)
        self.q, self.k, self.v = q.view(b, N, D), k.view(b, N_KV, D), v.view(b, N_KV, D)  # [T, heads, d] views
        inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D))
        emb = torch.cat([pos * inv, pos * inv])[None].expand(b, D)
        self.cos, self.sin = emb.cos().to(BF16).contiguous(), emb.sin().to(BF16).contiguous()  # [T, d]

    def meta(self):
        return (self.seq_lens, self.cu_seqlens, self.input_pos, self.cache_lens, self.page_table, self.slot_mapping)

    def old(self, layer: int) -> torch.Tensor:
        ops = torch.ops.autodeploy
        kc, vc = self.caches[layer]
        q4, k4 = self.q.view(1, self.b, N, D), self.k.view(1, self.b, N_KV, D)  # rope's [1, T, heads, d]
        q_rot, k_rot = ops.triton_rope(q4, k4, self.cos[None], self.sin[None], False)
        return ops.triton_cached_attention(q_rot.view(self.b, N, D), k_rot.view(self.b, N_KV, D), self.v, kc, vc,
                                           *self.meta(), None, None, None, None)

    def fused(self, layer: int, **tuning) -> torch.Tensor:
        from autodeploy.backends.triton import cached_attention_rope

        kc, vc = self.caches[layer]
        if tuning:
            return cached_attention_rope.launch(self.q, self.k, self.v, kc, vc, *self.meta(), self.cos, self.sin,
                                                False, None, None, None, None, **tuning)
        return torch.ops.autodeploy.triton_cached_attention_rope(self.q, self.k, self.v, kc, vc, *self.meta(),
                                                                 self.cos, self.sin, False, None, None, None, None)

    def check(self) -> str:
        kc0, vc0 = (c.clone() for c in self.caches[0])
        want = self.old(0)
        want_k = self.caches[0][0].clone()
        self.caches[0] = (kc0, vc0)
        got = self.fused(0)
        try:
            torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(self.caches[0][0].float(), want_k.float(), rtol=2e-2, atol=2e-2)
        except AssertionError as e:
            return " ".join(str(e).split("\n")[:3])
        return ""


def sweep(case: Case, auto: int) -> str:
    """The fused kernel's best launch settings for this case (to tune the defaults from data)."""
    results = []
    for splits, bn, warps in itertools.product(sorted({max(1, auto // 2), auto, min(64, 2 * auto), 16, 32}),
                                               (32, 64), (2, 4, 8)):
        cfg = dict(num_splits=splits, block_n=bn, num_warps=warps)
        try:
            t = _replay_us(lambda: [case.fused(i, **cfg) for i in range(case.layers)], case.layers)
        except Exception as e:  # a config the compiler rejects
            print(f"    {cfg}: {type(e).__name__}", flush=True)
            continue
        results.append((t, cfg))
    results.sort(key=lambda r: r[0])
    return ", ".join(f"{t:.2f} us {c}" for t, c in results[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16, help="calls per CUDA graph, each with its own KV cache")
    ap.add_argument("--max-seq-len", type=int, default=8192, help="sets the page table's width (h100 recipe: 8192)")
    ap.add_argument("--sweep", action="store_true", help="also time the fused kernel's launch settings")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    import triton

    import autodeploy.backends.triton  # noqa: F401
    import autodeploy.ops  # noqa: F401
    from autodeploy.backends.triton.paged_attention_decode import choose_num_splits

    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"layers/graph {args.layers}  page table {args.max_seq_len // PAGE} pages", flush=True)
    head = (f"{'b':>3s} {'ctx':>5s} {'splits':>6s} {'old launches':>12s} {'old us':>8s} {'fused us':>9s} "
            f"{'saved us':>9s} {'x16 layers':>10s}  check")
    print(head)
    print("-" * len(head))
    bad = 0
    for b, ctx in CASES:
        case = Case(b, ctx, args.layers, args.max_seq_len)
        splits = choose_num_splits(b, N_KV, case.page_table.shape[1] * PAGE, case.q.device)
        err = case.check()
        bad += bool(err)
        old = _replay_us(lambda: [case.old(i) for i in range(case.layers)], case.layers)
        fused = _replay_us(lambda: [case.fused(i) for i in range(case.layers)], case.layers)
        launches = 3 + (splits > 1)
        print(f"{b:3d} {ctx:5d} {splits:6d} {launches:12d} {old:8.2f} {fused:9.2f} {old - fused:9.2f} "
              f"{16 * (old - fused):10.1f}  {'ok' if not err else 'MISMATCH ' + err}", flush=True)
        if args.sweep:
            print(f"      fused best: {sweep(case, splits)}", flush=True)
        del case
        torch.cuda.empty_cache()
    print("us per layer (CUDA-graph replay); x16 layers: saved per decode step of a 16-layer model")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
