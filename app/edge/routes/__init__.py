"""One router per resource; shared dependencies as ``Annotated`` aliases. The dependencies are
``async def``: FastAPI runs plain ``def`` dependencies in its threadpool, two thread hops per
request for nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.engine.control import ControlService
from app.engine.exceptions import NotReady
from app.engine.service import GenerationService
from app.server.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def live_service(state: object) -> GenerationService:
    """The generation service, or NotReady while warming up or shutting down."""
    if state.lifecycle.draining:
        raise NotReady("the service is shutting down")
    if not state.lifecycle.ready:
        raise NotReady("models are still loading or warming up")
    return state.service  # type: ignore[attr-defined]


async def get_service(request: Request) -> GenerationService:
    return live_service(request.app.state)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[GenerationService, Depends(get_service)]


async def get_control(request: Request) -> ControlService:
    live_service(request.app.state)
    return request.app.state.control


ControlDep = Annotated[ControlService, Depends(get_control)]
