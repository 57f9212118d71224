"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter

from glm4voice_api.protocol.models import ModelCard, ModelList
from glm4voice_api.routes.deps import ServicesDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(services: ServicesDep) -> ModelList:
    return services.models.list_models()


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, services: ServicesDep) -> ModelCard:
    return services.models.retrieve_model(model)
