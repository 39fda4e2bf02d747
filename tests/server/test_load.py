"""A bounded load test on loopback (127.0.0.1 only): 200 concurrent streaming chat requests on the
tiny model, one client in five disconnecting after its first chunk. Every other request completes,
every disconnected one is cancelled, the KV pool ends all free, and the time to first token
(client side: request sent -> first chunk after the role chunk) is reported as p50 / p99.

With AUTODEPLOY_RECORD_BENCHMARKS=1 the numbers are also appended to BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import platform
import statistics
import time
from pathlib import Path

import openai

import autodeploy
from tests.server.client import serve, wait_idle

NUM_REQUESTS = 200
DISCONNECT_EVERY = 5  # 20% of the clients
MAX_TOKENS = 8
SECTION = ("\n## Server (CPU)\n\n`tests/server/test_load.py`: concurrent streaming chat requests over loopback to "
           "`autodeploy serve`'s app, one client in five disconnecting after its first chunk; TTFT measured by the "
           "client (request sent -> first chunk after the role chunk).\n\n"
           "| date | machine | model / recipe | load | TTFT p50 | TTFT p99 | TTFT mean | wall |\n"
           "|---|---|---|---|---|---|---|---|\n")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


async def one(client: openai.AsyncOpenAI, i: int) -> dict:
    leave = i % DISCONNECT_EVERY == 0
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"hello number {i}"}], temperature=0, stream=True,
        # a leaving client asks for more than it will wait for, so its cancel is what ends it
        max_tokens=96 if leave else MAX_TOKENS, extra_body={"ignore_eos": leave})
    ttft, finish, chunks = None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunks == 1:
            assert chunk.choices[0].delta.role == "assistant"
            continue
        ttft = ttft or time.perf_counter() - t0
        if leave:
            await stream.close()  # the connection goes away mid-stream
            break
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    return {"leave": leave, "ttft": ttft, "finish": finish}


async def run_load(base_url: str) -> tuple[list[dict], float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    t0 = time.perf_counter()
    results = await asyncio.gather(*[one(client, i) for i in range(NUM_REQUESTS)])
    wall = time.perf_counter() - t0
    await client.close()
    return results, wall


def test_200_concurrent_streams_with_disconnects(tiny_chat_dir):
    rt = autodeploy.optimize(str(tiny_chat_dir), "cpu", max_seq_len=256, max_batch_size=64, kv_num_pages=256,
                             kv_page_size=16, max_num_tokens=2048)
    served = serve(rt)
    assert served.server.host == "127.0.0.1"
    try:
        results, wall = asyncio.run(run_load(served.base_url))
        wait_idle(rt)  # every page back in the pool, nothing in flight
    finally:
        served.server.stop()
    stayed = [r for r in results if not r["leave"]]
    left = [r for r in results if r["leave"]]
    assert len(left) == NUM_REQUESTS // DISCONNECT_EVERY
    assert all(r["finish"] in ("stop", "length") for r in stayed), [r for r in stayed if not r["finish"]]
    assert rt.engine.finished["cancelled"] == len(left)
    assert rt.engine.finished["length"] + rt.engine.finished["stop"] == len(stayed)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    assert len(ttfts) == NUM_REQUESTS
    p50, p99 = percentile(ttfts, 50), percentile(ttfts, 99)
    line = (f"| {datetime.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            f"| tiny Llama (hidden 64, 2 layers), cpu recipe, max_batch_size 64 | {NUM_REQUESTS} streams "
            f"({len(left)} disconnect) | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms "
            f"| {statistics.mean(ttfts) * 1000:.0f} ms | {wall:.2f} s |")
    print(f"\nserver load: TTFT p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, wall {wall:.2f} s")
    if os.environ.get("AUTODEPLOY_RECORD_BENCHMARKS") == "1":
        path = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
        text = path.read_text() if path.exists() else ""
        with path.open("a") as f:
            if "## Server (CPU)" not in text:
                f.write(SECTION)
            f.write(line + "\n")
