"""Running a request's choices through the engine driver, shared by the completion routes.

    submit_all   every choice to the driver; a choice the engine refuses at once (prompt too long,
                 KV pool too small, bad sampling) turns the whole request into a 400
    collect      wait for all choices; polls the connection, and a client that left cancels them
    merged       the choices' StreamDeltas as one stream, in arrival order (for SSE)
    cancel_unfinished  on any exit: whatever is still running is cancelled and its pages freed
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator, Sequence

from starlette.requests import Request as HTTPRequest

from autodeploy.runtime.outputs import StreamDelta
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.server.driver import Stream
from autodeploy.server.errors import APIError

DISCONNECT_POLL_S = 0.1


class ClientGone(Exception):
    """The client closed the connection; its requests were cancelled."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


async def submit_all(state: Any, prompts: Sequence[list[int]], params: Sequence[SamplingParams],
                     base_id: str) -> list[Stream]:
    streams: list[Stream] = []
    try:
        for i, (ids, p) in enumerate(zip(prompts, params)):
            streams.append(await state.driver.submit(Request(ids, p, request_id=f"{base_id}-{i}")))
    except BaseException:
        cancel_unfinished(state, streams)
        raise
    for s in streams:
        r = s.request
        if r.finished and r.finish_reason == "error" and r.num_output == 0:
            cancel_unfinished(state, streams)
            raise APIError(400, r.error or "the request was refused", None, "invalid_request")
    return streams


def cancel_unfinished(state: Any, streams: Sequence[Stream]) -> None:
    for s in streams:
        if not s.request.finished:
            state.driver.cancel(s.request_id)


async def _drain(stream: Stream) -> None:
    async for _ in stream.deltas():
        pass


async def collect(state: Any, streams: Sequence[Stream], http: HTTPRequest) -> None:
    """Run every choice to its end; raises ClientGone (after cancelling them) if the client leaves."""
    tasks = [asyncio.ensure_future(_drain(s)) for s in streams]
    try:
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=DISCONNECT_POLL_S)
            if pending and await http.is_disconnected():
                raise ClientGone()
    finally:
        for t in tasks:
            t.cancel()
        cancel_unfinished(state, streams)


async def finish(state: Any, streams: Sequence[Stream], http: HTTPRequest, endpoint: str) -> bool:
    """A non-streamed response's wait: collect, record the metrics, raise a 500 APIError naming an engine
    failure. False when the client left (the route answers 499), True when every choice is complete."""
    try:
        await collect(state, streams, http)
    except ClientGone:
        return False
    finally:
        record(state, endpoint, streams)
    failed = next((m for s in streams if (m := engine_failure(s))), None)
    if failed:
        raise APIError(500, failed, None, "engine_error")
    return True


async def merged(streams: Sequence[Stream]) -> AsyncIterator[tuple[int, StreamDelta]]:
    """(choice index, delta) from every choice until all have finished."""
    if len(streams) == 1:
        async for d in streams[0].deltas():
            yield 0, d
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: Stream) -> None:
        async for d in s.deltas():
            queue.put_nowait((i, d))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            i, d = await queue.get()
            if d.finished:
                left -= 1
            yield i, d
    finally:
        for t in tasks:
            t.cancel()


def engine_failure(stream: Stream) -> str | None:
    """Why a choice failed in the engine (after it started), or None."""
    r = stream.request
    if r.finish_reason == "error" or (r.finish_reason == "cancelled" and r.error):
        return r.error or "the request failed"
    return None


def record(state: Any, endpoint: str, streams: Sequence[Stream]) -> None:
    for s in streams:
        r = s.request
        state.metrics.record(endpoint, r.finish_reason or "unfinished", r.num_prompt, r.num_output,
                             s.t_submit, s.t_first, s.t_last)
