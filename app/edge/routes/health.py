"""Probes and metrics. Liveness: the process answers. Readiness: models loaded, warmed up,
batchers running, and not shutting down."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.edge.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process runs")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, summary="Readiness: models loaded, warmed up, batchers running",
            responses={503: {"model": Health}})
async def readyz(request: Request) -> Response:
    state = request.app.state
    service = getattr(state, "service", None)
    if state.lifecycle.draining or state.lifecycle.stopping:
        status = "draining"
    elif state.lifecycle.fatal:
        status = "failed"
    elif not state.lifecycle.ready or service is None:
        status = "starting"
    elif not all(b.running for b in service.batchers):
        status = "batchers_stopped"
    else:
        status = "ready"
    models = {name: m.version for name, m in service.registry.models.items()} if service else {}
    return JSONResponse({"status": status, "models": models}, status_code=200 if status == "ready" else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
