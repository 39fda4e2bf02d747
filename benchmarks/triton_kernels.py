"""Micro-benchmark of the Triton kernels against their torch references on H100 model shapes.

    PYTHONPATH=$PWD python3 benchmarks/triton_kernels.py [--only elementwise,decode,prefill] [--quick] [--json out.json]

Columns per case:
  triton us   the kernel(s) of one op call replayed from a CUDA graph of 20 calls (how the runtime runs
              decode steps: no host launch cost); GB/s and TFLOP/s are computed from this time
  eager us    the same op called from Python (triton.testing.do_bench, L2 flushed): at these sizes it
              is mostly host launch cost, which CUDA graphs remove
  torch us    the torch reference, from a CUDA graph when it can be captured, else eager (marked *)
  GB/s        bytes the op must move per call (weights / KV read once, outputs written) over triton us;
              the H100's copy roofline is ~3000 GB/s
Every case first checks the Triton output against the reference (bf16 tolerance); any mismatch makes
the script exit 1 after printing the table. The host cost per call is in triton_attention_sweep.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BF16 = torch.bfloat16
SHAPES = {  # name: hidden, q heads, kv heads, head dim, ffn
    "1b": (2048, 32, 8, 64, 8192),
    "8b": (4096, 32, 8, 128, 14336),
}


@dataclass
class Row:
    kernel: str
    case: str
    triton_us: float  # CUDA-graph replay
    eager_us: float
    torch_us: float
    torch_graphed: bool
    gbytes: float  # bytes moved per call, GB
    flops: float = 0.0
    ok: bool = True
    err: str = ""

    @property
    def gbps(self) -> float:
        return self.gbytes / (self.triton_us * 1e-6)


def _bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3  # us


def _graph_bench(fn: Callable[[], object], calls: int = 20) -> float:
    """Median time of one call replayed from a CUDA graph holding `calls` calls."""
    import triton.testing

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(g.replay, warmup=5, rep=50, return_mode="median") * 1e3 / calls


def _graph_or_eager(fn: Callable[[], object], capturable: bool) -> tuple[float, bool]:
    """The paged attention reference syncs with the host (a per-sequence loop): timed eagerly."""
    return (_graph_bench(fn), True) if capturable else (_bench(fn), False)


def _check(got, want, rtol=2e-2, atol=2e-2) -> str:
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for g, w in zip(got, want):
        try:
            torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol)
        except AssertionError as e:
            return " ".join(str(e).split("\n")[:4])
    return ""


def _case(kernel, case, triton_fn, torch_fn, gbytes, flops=0.0, want=None, torch_capturable=True) -> Row:
    err = _check(triton_fn(), torch_fn() if want is None else want())
    torch_us, graphed = _graph_or_eager(torch_fn, torch_capturable)
    row = Row(kernel, case, _graph_bench(triton_fn), _bench(triton_fn), torch_us, graphed, gbytes, flops,
              ok=not err, err=err)
    _print_progress(row)
    return row


def _print_progress(row: Row) -> None:
    print(f"  {row.kernel:22s} {row.case:32s} {row.triton_us:9.1f} us  {row.gbps:7.0f} GB/s  "
          f"{'ok' if row.ok else 'MISMATCH'}", flush=True)


def _r(*shape, scale=1.0):
    return torch.randn(*shape, device="cuda", dtype=BF16) * scale


def bench_elementwise(quick: bool) -> list[Row]:
    ops = torch.ops.autodeploy
    rows = []
    for shape in ("1b", "8b"):
        h, n, n_kv, d, f = SHAPES[shape]
        for t in (1, 16) if quick else (1, 16, 128, 2048):
            x, res, w = _r(t, h, scale=2.0), _r(t, h), _r(h)
            b = 2 * x.numel() * 2 + h * 2
            rows.append(_case("rmsnorm", f"{shape} T={t}", lambda: ops.triton_rmsnorm(x, w, 1e-5, False),
                              lambda: ops.rmsnorm(x, w, 1e-5, False), b / 1e9))
            rows.append(_case("fused_add_rmsnorm", f"{shape} T={t}",
                              lambda: ops.triton_fused_add_rmsnorm(x, res, w, 1e-5, False),
                              lambda: (ops.rmsnorm(x + res, w, 1e-5, False), x + res), (4 * x.numel() * 2 + h * 2) / 1e9))
            gate_up = _r(t, 2 * f, scale=2.0)
            rows.append(_case("gated_mlp_act(fused)", f"{shape} T={t} f={f}",
                              lambda: ops.triton_fused_gated_mlp_act(gate_up, "silu"),
                              lambda: ops.gated_mlp_act(gate_up[:, :f], gate_up[:, f:], "silu"), 3 * t * f * 2 / 1e9))
            q, k = _r(1, t, n, d), _r(1, t, n_kv, d)
            ang = torch.rand(1, t, d // 2, device="cuda") * 100
            cos, sin = torch.cat([ang, ang], -1).cos().to(BF16), torch.cat([ang, ang], -1).sin().to(BF16)
            rows.append(_case("rope", f"{shape} T={t}", lambda: ops.triton_rope(q, k, cos, sin, False),
                              lambda: ops.rope(q, k, cos, sin, False), (2 * (q.numel() + k.numel()) + 2 * cos.numel()) * 2 / 1e9))
            kc = torch.zeros(t // 64 + 2, 64, n_kv, d, device="cuda", dtype=BF16)
            kv = _r(t, n_kv, d)
            slots = torch.randperm(kc.shape[0] * 64, device="cuda")[:t]
            rows.append(_kv_row(f"{shape} T={t}", kv, kc, torch.zeros_like(kc), slots))
    return rows


def _kv_row(case, kv, kc, vc, slots) -> Row:
    """The write mutates the caches, so it is checked on copies and timed in place."""
    from autodeploy.backends.torch.cached_attention import write_kv

    got, want = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
    torch.ops.autodeploy.triton_kv_cache_write(kv, kv, *got, slots)
    write_kv(kv, kv, *want, slots)
    err = _check(got, want, rtol=0, atol=0)
    fn = lambda: torch.ops.autodeploy.triton_kv_cache_write(kv, kv, kc, vc, slots)  # noqa: E731
    torch_us, graphed = _graph_or_eager(lambda: write_kv(kv, kv, kc, vc, slots), False)  # checks slots on the host
    row = Row("kv_cache_write", case, _graph_bench(fn), _bench(fn), torch_us, graphed, 4 * kv.numel() * 2 / 1e9,
              ok=not err, err=err)
    _print_progress(row)
    return row


def _paged(chunks, n, n_kv, d, page_size=64):
    """SequenceInfo + bf16 q/k/v and caches for chunks of (new tokens, cached tokens); pages shuffled."""
    from autodeploy.runtime.sequence_info import SequenceInfo

    need = [(p + s + page_size - 1) // page_size for s, p in chunks]
    perm = torch.randperm(sum(need) + 1).tolist()
    seqs, used = [], 0
    for (s, p), k in zip(chunks, need):
        seqs.append(([0] * s, p, perm[used : used + k]))
        used += k
    info = SequenceInfo.build(seqs, page_size, device="cuda")
    t = info.num_tokens
    kc, vc = _r(len(perm), page_size, n_kv, d), _r(len(perm), page_size, n_kv, d)
    return info, _r(t, n, d), _r(t, n_kv, d), _r(t, n_kv, d), kc, vc


def bench_attention(quick: bool, which: set[str]) -> list[Row]:
    ops = torch.ops.autodeploy
    rows = []
    cases = []
    if "decode" in which:
        for shape in ("1b", "8b"):
            for b, ctx in ((1, 384), (1, 4096), (16, 384), (16, 4096)) if quick else (
                    (1, 384), (1, 1024), (1, 4096), (1, 16384), (16, 384), (16, 4096), (64, 1024), (256, 512)):
                cases.append(("decode", shape, [(1, ctx - 1)] * b, f"{shape} b={b} ctx={ctx}", {}))
        cases.append(("decode", "1b", [(1, 4095)], "1b b=1 ctx=4096 win=512+sinks", dict(window=512, sinks=True)))
    if "prefill" in which:
        for shape in ("1b", "8b"):
            cases.append(("prefill", shape, [(2048, 0)], f"{shape} 1x2048", {}))
            cases.append(("prefill", shape, [(512, 1536)], f"{shape} chunk 512 after 1536", {}))
            if not quick:
                cases.append(("prefill", shape, [(128, 0)] * 16, f"{shape} 16x128", {}))
                cases.append(("prefill", shape, [(256, 0)] * 2 + [(1, 700)] * 30, f"{shape} mixed 2x256+30 dec", {}))
    for kind, shape, chunks, label, feat in cases:
        h, n, n_kv, d, f = SHAPES[shape]
        info, q, k, v, kc, vc = _paged(chunks, n, n_kv, d)
        sinks = _r(n) if feat.get("sinks") else None
        meta = (info.seq_lens, info.cu_seqlens, info.input_pos, info.cache_lens, info.page_table, info.slot_mapping)
        tail = (sinks, None, feat.get("window"), None)
        tri = lambda: ops.triton_cached_attention(q, k, v, kc, vc, *meta, *tail)  # noqa: E731
        ref = lambda: ops.cached_attention(q, k, v, kc, vc, *meta, *tail)  # noqa: E731
        ctx = info.cache_lens.long()
        keys = int(ctx.sum()) if feat.get("window") is None else int(ctx.clamp(max=feat["window"]).sum())
        gbytes = (keys * n_kv * d * 2 * 2 + 2 * q.numel() * 2) / 1e9  # K + V read once, q in, out
        lens, pos = info.seq_lens.long(), info.input_pos.long()
        flops = float(4 * n * d * ((pos * lens) + lens * (lens + 1) / 2).sum()) if kind == "prefill" else 0.0
        rows.append(_case(f"attention {kind}", label, tri, ref, gbytes, flops, torch_capturable=False))
        if kind == "decode" and not feat:  # torch's best unpaged kernel on the same keys, for scale
            rows.append(_sdpa_row(label, q, ctx, n_kv, d, gbytes))
    return rows


def _sdpa_row(label, q, ctx, n_kv, d, gbytes) -> Row:
    """SDPA over dense contiguous [b, n_kv, ctx, d] caches (what a static-cache HF decode runs)."""
    import torch.nn.functional as F

    b, n = q.shape[0], q.shape[1]
    c = int(ctx.max())
    kd, vd = _r(b, n_kv, c, d), _r(b, n_kv, c, d)
    qd = q.view(b, n, 1, d)
    try:
        fn = lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)  # noqa: E731
        fn()
    except TypeError:  # enable_gqa missing: expand the KV heads
        ke, ve = kd.repeat_interleave(n // n_kv, 1), vd.repeat_interleave(n // n_kv, 1)
        fn = lambda: F.scaled_dot_product_attention(qd, ke, ve)  # noqa: E731
    t = _graph_bench(fn)
    row = Row("sdpa dense (torch)", label, t, _bench(fn), t, True, gbytes)
    _print_progress(row)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="elementwise,decode,prefill", help="comma list of: elementwise, decode, prefill")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    import triton

    import autodeploy.backends.triton  # noqa: F401
    import autodeploy.ops  # noqa: F401

    torch.manual_seed(0)
    which = set(args.only.split(","))
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    rows: list[Row] = []
    if "elementwise" in which:
        rows += bench_elementwise(args.quick)
    rows += bench_attention(args.quick, which)

    print()
    head = (f"{'kernel':22s} {'case':32s} {'triton us':>9s} {'eager us':>9s} {'torch us':>9s} {'speedup':>8s} "
            f"{'GB/s':>6s} {'TFLOP/s':>7s}  check")
    print(head)
    print("-" * len(head))
    for r in rows:
        tf = f"{r.flops / (r.triton_us * 1e-6) / 1e12:7.1f}" if r.flops else " " * 7
        torch_us = f"{r.torch_us:8.1f}{' ' if r.torch_graphed else '*'}"
        print(f"{r.kernel:22s} {r.case:32s} {r.triton_us:9.1f} {r.eager_us:9.1f} {torch_us} "
              f"{r.torch_us / r.triton_us:7.2f}x {r.gbps:6.0f} {tf}  {'ok' if r.ok else 'MISMATCH ' + r.err}")
    print("* torch reference not capturable in a CUDA graph: eager time, host cost included")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"gbps": r.gbps} for r in rows], indent=1))
    bad = [r for r in rows if not r.ok]
    if bad:
        print(f"\n{len(bad)} numeric mismatches", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
