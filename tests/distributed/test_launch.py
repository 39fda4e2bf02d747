"""Launching: the step message round trip, and `--world-size 2` on the CLI (spawned ranks).

`autodeploy optimize … --world-size 2` spawns two ranks that export, shard and load; rank 0 prints
the plan and the report, rank 1 follows until rank 0 exits. `autodeploy bench … --world-size 2`
runs the engine on rank 0 (every step broadcast) while rank 1 runs the same forwards.
"""

from __future__ import annotations

import json

import pytest
import torch

from autodeploy.cli.main import main
from autodeploy.distributed.launch import _pack, _unpack, payload_size
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tiny_models import save_tiny


def test_step_message_round_trip():
    info = SequenceInfo.build([([5, 6, 7], 0, [3]), ([9], 20, [0, 4])], page_size=16, max_pages=3)
    source = torch.tensor([-1, -1, -1, 0])
    payload = _pack(info, source)
    T, b, P = info.num_tokens, info.num_seqs, 3
    assert payload.numel() == payload_size(T, b, P, True)
    header = [1, T, b, P, info.num_prefill, info.num_decode, info.page_size, 1, 1]
    got, got_source = _unpack(payload, T, b, P, header)
    for name in ("input_ids", "position_ids", "seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table",
                 "slot_mapping", "last_token_idx"):
        want = getattr(info, name)
        assert torch.equal(getattr(got, name), want) and getattr(got, name).dtype == want.dtype, name
    assert (got.num_prefill, got.num_decode, got.page_size) == (1, 1, 16)
    assert torch.equal(got_source, source)


class Recorder:
    """A paged model that records what each step asked of it."""

    device = "cpu"
    accepts_token_source = True

    def __init__(self):
        self.steps = []

    def forward(self, info, token_source=None):
        prev, source = token_source if token_source is not None else (None, None)
        self.steps.append({"info": info, "prev": prev, "source": source})
        return torch.zeros(info.num_seqs, 4)


def _steps():
    small = SequenceInfo.build([([5], 9, [1]), ([6], 3, [2])], page_size=16)  # decode: one message
    big = SequenceInfo.build([(list(range(300)), 0, list(range(19)))], page_size=16)  # a payload of its own
    return [(small, None), (big, None), (small, (torch.tensor([7, 8]), torch.tensor([0, 1])))]


def _leader_and_follower(rank: int, out):
    from autodeploy.distributed import dist
    from autodeploy.distributed.launch import LeaderModel, follow, stop_followers

    dist.init_distributed(2, "cpu")
    model = Recorder()
    if rank == 0:
        import autodeploy.distributed.launch as launch

        launch._pending_stop = True  # what optimize() sets up
        leader = LeaderModel(model)
        assert leader.accepts_token_source and leader.metadata_device == torch.device("cpu")
        for info, source in _steps():
            leader.forward(info, token_source=source) if source is not None else leader.forward(info)
        stop_followers()
        return {"steps": len(model.steps)}
    n = follow(model)
    return {"followed": n, "steps": model.steps}


def test_followers_see_every_step(tmp_path):
    from tests.distributed.spawn import run_ranks

    (leader, follower), _ = run_ranks(_leader_and_follower, 2, tmp_path)
    assert leader["steps"] == follower["followed"] == 3
    for (info, source), got in zip(_steps(), follower["steps"]):
        for name in ("input_ids", "position_ids", "seq_lens", "cu_seqlens", "input_pos", "cache_lens", "page_table",
                     "slot_mapping", "last_token_idx"):
            assert torch.equal(getattr(got["info"], name), getattr(info, name)), name
        if source is None:
            assert got["prev"] is None and got["source"] is None
        else:  # the previous step's sampled tokens, sent from rank 0's device
            assert torch.equal(got["prev"], source[0]) and torch.equal(got["source"], source[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("qwen3", tmp_path_factory.mktemp("cli") / "qwen3")


SETS = ["--set", "runtime.dtype=float32", "--set", "runtime.kv_num_pages=16", "--set", "runtime.max_seq_len=64",
        "--set", "runtime.max_num_tokens=64"]


def test_optimize_world_size_two(tiny, capfd):
    code = main(["optimize", str(tiny), "--recipe", "cpu", "--world-size", "2", *SETS])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert "Sharding plan (2 ranks)" in out + err
    assert "shard_tensor_parallel" in out and "rank 0 of 2 holds" in out + err


def test_bench_world_size_two(tiny, tmp_path, capfd):
    result = tmp_path / "bench.json"
    code = main(["bench", f"random:{tiny}", "--recipe", "cpu", "--world-size", "2", "--input-len", "6",
                 "--output-len", "4", "--batch-sizes", "1,2", "--no-baselines", "--no-warmup", "--json", str(result),
                 *SETS])
    _, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    res = json.loads(result.read_text())
    assert [w.get("error") for w in res["workloads"]] == [None, None]
    assert all(w["output_tokens"] == w["batch_size"] * 4 and w["failed"] == 0 for w in res["workloads"])
