"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter

from app.edge.routes import ServiceDep
from app.edge.schemas import ErrorResponse, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, summary="List the served models")
async def list_models(service: ServiceDep) -> dict:
    return {"models": [m.info() for m in service.registry.models.values()]}


@router.get("/{model}", response_model=ModelInfo, summary="Describe one model",
            responses={404: {"model": ErrorResponse}})
async def get_model(model: str, service: ServiceDep) -> dict:
    return service.registry.get(model).info()
