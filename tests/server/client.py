"""Helpers the server tests share: a served runtime on a free loopback port, and waiting for the
engine to go idle with its KV pool all free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from autodeploy.server.app import ServerConfig, create_app
from autodeploy.server.background import BackgroundServer


@dataclass
class Served:
    runtime: Any
    server: BackgroundServer
    app: Any
    api_key: str | None

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def serve(runtime, **config) -> Served:
    cfg = ServerConfig(**{"model_name": "tiny", **config})
    app = create_app(runtime, cfg)
    return Served(runtime, BackgroundServer(app).start(), app, cfg.api_key)


def wait_idle(runtime, timeout: float = 30.0) -> None:
    """Until no request is in flight and every KV page is free (asserted)."""
    engine = runtime.engine
    deadline = time.monotonic() + timeout
    while (engine.requests or engine.pool.num_used) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not engine.requests, f"requests still in flight: {list(engine.requests)}"
    assert engine.pool.num_used == 0 and engine.pool.num_free == engine.pool.num_pages
    engine.pool.check_invariants()
