"""push_all_reduce.py's kernel in one process: the buffer layout, epochs and parities, empty slots, the sum
and the fused residual add + RMSNorm, for 2 ranks whose buffers are host tensors here.

A kernel waits until its peer's values have landed, and the interpreter runs one launch at a time, so
rank 1's push to rank 0 is written by the test first (into the slot the module docstring lays out), then
rank 0's kernel runs (it pushes into rank 1's buffer, reads the test's copy and empties it), then rank 1's
(which reads rank 0's row and empties it, and pushes its real row into rank 0's slot: the test checks and
empties that one, standing in for rank 0 having read it). Five calls alternate plain and fused: parities
1, 0, 1, … and counters 1..5. Both ranks must return bit-identical results. The real concurrent case
(two GPUs, replayed from a CUDA graph): tests/gpu/test_tp_nccl.py.
"""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import push_all_reduce
from tests.backends.triton.cases import DEVICE, randn
from tests.helpers.tolerances import assert_close

W, MAX_ROWS, ROW_BYTES = 2, 4, 512
rmsnorm = torch.ops.autodeploy.rmsnorm

# both ranks' buffers are host tensors, which only the interpreter can address; with CUDA the real two-GPU
# case runs instead (tests/gpu/test_tp_nccl.py::test_push_all_reduce_matches_nccl_on_both_ranks)
pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="host-memory ranks need the Triton interpreter; "
                                "CUDA hosts run tests/gpu/test_tp_nccl.py's push test")


def _buffers():
    return [torch.full((2 * W * MAX_ROWS * ROW_BYTES,), 255, dtype=torch.uint8) for _ in range(W)]  # empty


def _rows(buf: torch.Tensor, dtype: torch.dtype):
    return buf.view(dtype).view(2, W, MAX_ROWS, ROW_BYTES // dtype.itemsize)


def _empty(t: torch.Tensor) -> bool:
    return bool((t.view(torch.uint8) == 255).all())


@pytest.mark.parametrize("shape", [(1, 100), (3, 40)], ids=str)
def test_two_ranks_sum_then_add_and_normalize(shape):
    dtype = torch.float32
    m, n = shape
    bufs = _buffers()
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = [torch.zeros(MAX_ROWS, dtype=torch.int32) for _ in range(W)]
    residual, w = randn(m, n, scale=2.0), randn(n)
    rows0, rows1 = _rows(bufs[0], dtype), _rows(bufs[1], dtype)
    for call in range(5):
        epoch, fused = call + 1, call % 2 == 1
        x = [randn(m, n) for _ in range(W)]
        rows0[epoch & 1, 1, :m, :n] = x[1]  # rank 1's push to rank 0, written by the test
        kw = dict(residual=residual, weight=w, eps=1e-6) if fused else {}
        outs = [push_all_reduce.launch(x[r], peers, counters[r], r, W, MAX_ROWS, ROW_BYTES, **kw)
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
        assert _empty(bufs[1])  # rank 0's push to rank 1 was read there and emptied
        assert torch.equal(rows0[epoch & 1, 1, :m, :n], x[1])  # rank 1's real push: the bytes the test wrote
        rows0[epoch & 1, 1, :m, :n].view(torch.uint8).fill_(255)  # (rank 0 read the test's copy of it) ...
        assert _empty(bufs[0])  # ... and the test's copy was emptied, nothing else written
    assert all((c[:m] == 5).all() and (c[m:] == 0).all() for c in counters)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_an_all_ones_value_is_sent_as_another_nan(dtype):
    # all-one bits mark an empty value: a NaN with those bits must arrive as a NaN, not stall the peer
    bufs = _buffers()
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = [torch.zeros(MAX_ROWS, dtype=torch.int32) for _ in range(W)]
    ints = torch.int32 if dtype == torch.float32 else torch.int16
    x0 = torch.tensor([[1.0, 2.0, 3.0]], dtype=dtype)
    x0.view(ints)[0, 1] = -1  # all ones: a NaN the buffer would read as empty
    _rows(bufs[0], dtype)[1, 1, 0, :3] = torch.tensor([4.0, 5.0, 6.0], dtype=dtype)  # rank 1's push
    push_all_reduce.launch(x0, peers, counters[0], 0, W, MAX_ROWS, ROW_BYTES)
    sent = _rows(bufs[1], dtype)[1, 0, 0, :3]
    assert sent[0] == 1.0 and sent[2] == 3.0 and torch.isnan(sent[1]) and int(sent.view(ints)[1]) != -1


@pytest.mark.parametrize("shape", [(3, 100), (1, 256)], ids=str)
def test_two_ranks_gather_on_the_last_dim(shape):
    # the flat [R, n] shard in slot-sized chunks (128 fp32 values here): (3, 100) takes 3 programs, the last
    # one partial; each chunk is pushed, flagged and scattered to out[r, src * n + k] on both ranks
    dtype, block = torch.float32, ROW_BYTES // 4
    bufs = _buffers()
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = [torch.zeros(MAX_ROWS, dtype=torch.int32) for _ in range(W)]
    rows0 = _rows(bufs[0], dtype)
    for call in range(3):  # epochs 1..3 on every slot the chunks use, parities 1, 0, 1
        x = [randn(*shape) for _ in range(W)]
        flat1 = x[1].reshape(-1)
        chunks = -(-flat1.numel() // block)
        for c in range(chunks):  # rank 1's pushes to rank 0, written by the test
            part = flat1[c * block : (c + 1) * block]
            rows0[(call + 1) & 1, 1, c, : part.numel()] = part
        outs = [push_all_reduce.launch_gather(x[r], peers, counters[r], r, W, MAX_ROWS, ROW_BYTES)
                for r in range(W)]
        want = torch.cat(x, dim=-1)
        assert outs[0].shape == (shape[0], W * shape[1])
        assert torch.equal(outs[0], want) and torch.equal(outs[1], want)
        assert _empty(bufs[1])  # read and emptied; rank 1's real pushes into rank 0 stand for the test's copies
        bufs[0].fill_(255)
    assert all((c[:chunks] == 3).all() and (c[chunks:] == 0).all() for c in counters)


def test_unsupported_calls_are_named():
    x = torch.randn(2, 8)
    assert push_all_reduce.unsupported_reason(x, MAX_ROWS, ROW_BYTES) == "not a CUDA tensor"


@pytest.mark.parametrize("split", [1, 2], ids=["unsplit", "split K"])
def test_gemv_pushes_its_tiles_and_the_kernel_only_receives(split):
    # rank 0's row-parallel projection (linear_all_reduce_add_rmsnorm): the GEMV pushes each finished output
    # tile into rank 1's buffer (with a split K, the tile's last split does), the kernel then only waits for
    # rank 1's rows, sums, adds and normalizes; rank 1's push is written by the test, as above
    from autodeploy.backends.triton import linear

    dtype, (m, k, n) = torch.float32, (3, 128, 40)
    bufs = _buffers()
    peers = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    counters = torch.zeros(MAX_ROWS, dtype=torch.int32)
    x, w, residual, nw = randn(m, k), randn(n, k), randn(m, n, scale=2.0), randn(n)
    cfg = dict(kind="dot_t", bn=16, bk=64, split=split, num_warps=4, num_stages=2)  # 3 n tiles, the last partial
    rows0, rows1 = _rows(bufs[0], dtype), _rows(bufs[1], dtype)
    for call in range(3):
        epoch = call + 1
        partial1 = randn(m, n)
        rows0[epoch & 1, 1, :m, :n] = partial1  # rank 1's GEMV push, written by the test
        out0 = linear.launch(x, w, config=cfg, push=(peers, counters, 0, W, MAX_ROWS, ROW_BYTES))
        assert_close(out0, torch.nn.functional.linear(x, w))
        assert torch.equal(rows1[epoch & 1, 0, :m, :n], out0)  # every tile pushed, as stored
        assert (counters[:m] == call).all()  # the GEMV reads the slots' epochs; the reducing kernel advances them
        normed, new_res = push_all_reduce.launch(out0, peers, counters, 0, W, MAX_ROWS, ROW_BYTES, residual=residual,
                                                 weight=nw, eps=1e-6, pushed=True)
        assert_close(new_res, out0 + partial1 + residual)
        assert_close(normed, rmsnorm(out0 + partial1 + residual, nw, 1e-6, False))
        assert _empty(bufs[0])  # rank 1's rows read and emptied, nothing pushed back by the reducing kernel
        rows1[epoch & 1, 0, :m, :n].view(torch.uint8).fill_(255)  # (rank 1 would read them) ...
        assert _empty(bufs[1])  # ... and nothing else was written there
    assert (counters[:m] == 3).all() and (counters[m:] == 0).all()
