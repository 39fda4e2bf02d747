"""GET /v1/models, /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from autodeploy.server.schemas import ModelCard, ModelList, dump

router = APIRouter()


def _card(state) -> ModelCard:
    return ModelCard(id=state.config.model_name, created=state.created, max_model_len=state.limits.max_seq_len)


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return dump(ModelList(data=[_card(request.app.state.server)]))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    state = request.app.state.server
    state.check_model(model_id)
    return dump(_card(state))
