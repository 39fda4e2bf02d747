"""The FastAPI app: an OpenAI-compatible HTTP front over a Runtime.

    create_app(runtime, ServerConfig(model_name=...))
        GuardMiddleware (API key, body size)
        /v1/models  /v1/completions  /v1/chat/completions  /health  /metrics
        lifespan: the engine driver thread starts with the app and stops with it

Every error, including unknown paths and unexpected exceptions, answers in OpenAI's error shape;
a failing request never takes the server down.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from autodeploy.server.auth import GuardMiddleware
from autodeploy.server.errors import APIError, error_response
from autodeploy.server.routes import chat, completions, health, models
from autodeploy.server.state import ServerConfig, ServerState

log = logging.getLogger(__name__)


def create_app(runtime: Any, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig(model_name=str(getattr(runtime.source, "spec", None) or "model"))
    state = ServerState(runtime, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.driver.start()
        try:
            yield
        finally:
            state.driver.stop()

    app = FastAPI(title="autodeploy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        state.metrics.record_rejected(request.url.path, exc.status)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        e = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in e.get("loc", ())[1:]) or None
        return error_response(400, f"Invalid request: {e.get('msg', 'validation failed')}", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        msg = f"Unknown path {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, msg, None, code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error")

    for r in (models.router, completions.router, chat.router, health.router):
        app.include_router(r)
    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    return app


__all__ = ["create_app", "ServerConfig"]
