"""GET /health (the engine loop is alive) and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = request.app.state.server
    if not state.driver.alive:
        return JSONResponse({"status": "engine stopped"}, status_code=503)
    return JSONResponse({"status": "ok", "requests_in_flight": state.driver.num_in_flight})


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state.server
    return PlainTextResponse(state.metrics.render(state.driver.snapshot),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
