"""push_all_reduce.py's kernel in one process: the buffer layout, epochs and parities, the sum and the fused
residual add + RMSNorm, for 2 ranks whose buffers are host tensors here.

A kernel waits until its peer has pushed, and the interpreter runs one launch at a time, so rank 1's
push to rank 0 is written by the test first (into the slot and flag the module docstring lays out), then
rank 0's kernel runs (it pushes into rank 1's buffer), then rank 1's (which finds rank 0's row there and
overwrites the test's copy with the same bytes). Five calls alternate plain and fused: parities 1, 0, 1,
… and counters 1..5. Both ranks must return bit-identical results. The real concurrent case (two GPUs,
replayed from a CUDA graph): tests/gpu/test_tp_nccl.py.
"""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import push_all_reduce
from tests.backends.triton.cases import DEVICE, randn
from tests.helpers.tolerances import assert_close

W, MAX_ROWS, ROW_BYTES, FLAG_BYTES = 2, 4, 512, 64
rmsnorm = torch.ops.autodeploy.rmsnorm

# both ranks' buffers are host tensors, which only the interpreter can address; with CUDA the real two-GPU
# case runs instead (tests/gpu/test_tp_nccl.py::test_push_all_reduce_matches_nccl_on_both_ranks)
pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="host-memory ranks need the Triton interpreter; "
                                "CUDA hosts run tests/gpu/test_tp_nccl.py's push test")


def _views(buf: torch.Tensor, dtype: torch.dtype):
    flags = buf[: W * MAX_ROWS * 4].view(torch.int32).view(W, MAX_ROWS)
    rows = buf[FLAG_BYTES:].view(dtype).view(2, W, MAX_ROWS, ROW_BYTES // dtype.itemsize)
    return flags, rows


@pytest.mark.parametrize("shape", [(1, 100), (3, 40)], ids=str)
def test_two_ranks_sum_then_add_and_normalize(shape):
    dtype = torch.float32
    m, n = shape
    bufs = [torch.zeros(FLAG_BYTES + 2 * W * MAX_ROWS * ROW_BYTES, dtype=torch.uint8) for _ in range(W)]
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = [torch.zeros(MAX_ROWS, dtype=torch.int32) for _ in range(W)]
    residual, w = randn(m, n, scale=2.0), randn(n)
    for call in range(5):
        epoch, fused = call + 1, call % 2 == 1
        x = [randn(m, n) for _ in range(W)]
        flags0, rows0 = _views(bufs[0], dtype)
        rows0[epoch & 1, 1, :m, :n] = x[1]  # rank 1's push to rank 0, written by the test
        flags0[1, :m] = epoch
        kw = dict(residual=residual, weight=w, eps=1e-6) if fused else {}
        outs = [push_all_reduce.launch(x[r], peers, counters[r], r, W, MAX_ROWS, FLAG_BYTES, ROW_BYTES, **kw)
                for r in range(W)]
        total = x[0] + x[1]
        if fused:
            (n0, r0), (n1, r1) = outs
            assert torch.equal(n0, n1) and torch.equal(r0, r1)  # every rank holds the same activations
            assert_close(r0, total + residual)
            assert_close(n0, rmsnorm(total + residual, w, 1e-6, False))
        else:
            assert torch.equal(outs[0], outs[1])
            assert_close(outs[0], total)
        flags1, rows1 = _views(bufs[1], dtype)
        assert torch.equal(rows1[epoch & 1, 0, :m, :n], x[0])  # rank 0 pushed its rows to rank 1 ...
        assert (flags1[0, :m] == epoch).all() and (flags1[0, m:] == 0).all()  # ... and raised their flags
        assert torch.equal(rows0[epoch & 1, 1, :m, :n], x[1])  # rank 1's own push: the bytes the test wrote
    assert all((c[:m] == 5).all() and (c[m:] == 0).all() for c in counters)


@pytest.mark.parametrize("shape", [(3, 100), (1, 256)], ids=str)
def test_two_ranks_gather_on_the_last_dim(shape):
    # the flat [R, n] shard in slot-sized chunks (128 fp32 values here): (3, 100) takes 3 programs, the last
    # one partial; each chunk is pushed, flagged and scattered to out[r, src * n + k] on both ranks
    dtype, block = torch.float32, ROW_BYTES // 4
    bufs = [torch.zeros(FLAG_BYTES + 2 * W * MAX_ROWS * ROW_BYTES, dtype=torch.uint8) for _ in range(W)]
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = [torch.zeros(MAX_ROWS, dtype=torch.int32) for _ in range(W)]
    for call in range(3):  # epochs 1..3 on every slot the chunks use, parities 1, 0, 1
        x = [randn(*shape) for _ in range(W)]
        flat1 = x[1].reshape(-1)
        flags0, rows0 = _views(bufs[0], dtype)
        chunks = -(-flat1.numel() // block)
        for c in range(chunks):  # rank 1's pushes to rank 0, written by the test
            part = flat1[c * block : (c + 1) * block]
            rows0[(call + 1) & 1, 1, c, : part.numel()] = part
            flags0[1, c] = call + 1
        outs = [push_all_reduce.launch_gather(x[r], peers, counters[r], r, W, MAX_ROWS, FLAG_BYTES, ROW_BYTES)
                for r in range(W)]
        want = torch.cat(x, dim=-1)
        assert outs[0].shape == (shape[0], W * shape[1])
        assert torch.equal(outs[0], want) and torch.equal(outs[1], want)
    assert all((c[:chunks] == 3).all() and (c[chunks:] == 0).all() for c in counters)


def test_unsupported_calls_are_named():
    x = torch.randn(2, 8)
    assert push_all_reduce.unsupported_reason(x, MAX_ROWS, ROW_BYTES) == "not a CUDA tensor"
