"""The engine loop of the server: one thread owns the Runtime's engine.

    handlers ──submit / cancel──▶ inbox ──(between steps)──▶ engine.add_request / abort
    thread: while requests are in flight: rt.step() ──▶ new StreamDelta events on each request
                                          ──▶ each waiting coroutine woken on its event loop

Handlers never take the runtime's lock themselves, so a 100 ms forward never blocks the event loop,
and a disconnecting client's cancel lands before the next step: its pages are free at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, AsyncIterator

from autodeploy.runtime.outputs import StreamDelta
from autodeploy.runtime.request import Request

log = logging.getLogger(__name__)


class Stream:
    """One request as the server sees it: its StreamDelta pieces, awaited on the handler's loop."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.event = asyncio.Event()
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None  # first output token seen by the handler
        self.t_last: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def deltas(self) -> AsyncIterator[StreamDelta]:
        events = self.request.events
        while True:
            while events:
                d = events.popleft()
                if d.token_ids:
                    now = time.perf_counter()
                    self.t_first = self.t_first or now
                    self.t_last = now
                yield d
                if d.finished:
                    return
            self.event.clear()
            if events:  # appended between the last popleft and the clear
                continue
            await self.event.wait()


def _set_all(events: list[asyncio.Event]) -> None:
    for e in events:
        e.set()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():  # the handler may have gone (client disconnected while queued)
        fut.set_result(None)


class EngineDriver:
    def __init__(self, runtime: Any):
        self.rt = runtime
        self._inbox: deque[tuple] = deque()
        self._wake = threading.Event()
        self._streams: dict[str, Stream] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        self.snapshot: dict[str, Any] = {}  # engine metrics after the latest step
        self.num_step_failures = 0

    # ---- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        engine = self.rt.engine  # build the paged model and the engine before the first request
        self.snapshot = engine.metrics().as_dict()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="autodeploy-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # ---- handler side (event loop thread) -----------------------------------------------------
    async def submit(self, request: Request) -> Stream:
        """Queue the request; returns once the engine has admitted it (or failed it at once)."""
        loop = asyncio.get_running_loop()
        stream = Stream(request, loop)
        fut = loop.create_future()
        self._inbox.append(("add", stream, fut))
        self._wake.set()
        await fut
        return stream

    def cancel(self, request_id: str) -> None:
        """End the request before the next step; its pages are freed then."""
        self._inbox.append(("cancel", request_id))
        self._wake.set()

    # ---- engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.rt.engine
        while not self._stop:
            self._drain()
            if engine.has_unfinished:
                try:
                    self.rt.step()
                except Exception as e:  # a failing step fails its requests, never the server
                    self.num_step_failures += 1
                    log.exception("engine step failed")
                    self._fail_all(f"engine step failed: {type(e).__name__}: {e}")
                self.snapshot = engine.metrics().as_dict()
                self._notify()
            else:
                self._wake.wait(0.5)
                self._wake.clear()
        self._fail_all("server shutting down")

    def _drain(self) -> None:
        touched = False
        while self._inbox:
            cmd = self._inbox.popleft()
            touched = True
            if cmd[0] == "add":
                _, stream, fut = cmd
                try:
                    self.rt.submit(stream.request)
                except Exception as e:  # e.g. resubmitted: fail it alone
                    log.exception("submit failed")
                    stream.request.error = str(e)
                    stream.request.events.append(StreamDelta(stream.request_id, [], "", None, True, "error", str(e)))
                self._streams[stream.request_id] = stream
                self._call(stream.loop, _resolve, fut)
            else:
                self.rt.cancel(cmd[1])
        if touched:
            self.snapshot = self.rt.engine.metrics().as_dict()
            self._notify()

    def _fail_all(self, reason: str) -> None:
        engine = self.rt.engine
        for rid in list(engine.requests):
            req = engine.requests[rid]
            engine.abort(rid)
            req.error = reason
        self._notify()

    def _notify(self) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        for rid, s in list(self._streams.items()):
            if s.request.events or s.request.finished:
                by_loop.setdefault(s.loop, []).append(s.event)
            if s.request.finished:
                del self._streams[rid]
        for loop, events in by_loop.items():
            self._call(loop, _set_all, events)

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # that loop has closed: nobody is waiting
            pass
