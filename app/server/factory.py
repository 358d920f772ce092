"""``create_app(settings)`` and the lifespan: load (or take) the registry, start one batcher per
model operation, warm up in the background (readiness stays 503 until done), and on shutdown
turn readiness off and let accepted work finish."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.edge.errors import install_error_handlers
from app.edge.fastpath import FastPath
from app.edge.gateway import ApiKeyMiddleware, ProxyHeadersMiddleware
from app.edge.middleware import (
    BodyLimitMiddleware,
    HeadAsGetMiddleware,
    RequestContextMiddleware,
)
from app.edge.openai import OpenAIErrorMiddleware
from app.edge.openapi import tailored_openapi
from app.edge.routes import catalog, control, generation, health, images, playground
from app.edge.shedding import LoadShedMiddleware
from app.engine.control import ControlService
from app.engine.registry import Registry
from app.engine.service import GenerationService
from app.server.drain import batch_drain_budget_s
from app.server.lifecycle import Lifecycle
from app.server.metrics import Metrics
from app.server.settings import Settings

log = logging.getLogger("latentserve")


async def _warm_up(app: FastAPI, registry: Registry, executor: ThreadPoolExecutor) -> None:
    state = app.state
    try:
        await asyncio.get_running_loop().run_in_executor(executor, registry.warm_up)
    except Exception as e:
        state.lifecycle.fatal = f"warm-up failed: {e!r}"
        log.error("warm-up failed, the service will not become ready: %r", e)
        on_fatal = state.lifecycle.on_fatal
        if on_fatal is not None:
            on_fatal()
        return
    # Everything loaded so far (modules, weights, the framework) lives as long as the process:
    # moved out of the collector's generations, a full collection no longer walks it (a GC pause
    # in the middle of a batch's answers shows in the tail latency).
    gc.collect()
    gc.freeze()
    state.lifecycle.ready = True  # a worker serves what it still accepts while it stops; a single process drains (503)
    if state.lifecycle.stopping:  # a shutdown began while it ran: the gauge stays at 0, as /readyz says "draining"
        log.info("warm-up done during a shutdown: not marked ready")
        return
    state.metrics.set_ready(True)
    log.info("ready: %s on %s", ", ".join(registry.models), registry.device)


def create_app(settings: Settings | None = None, registry: Registry | None = None, *,
               warm_before_serving: bool = False) -> FastAPI:
    """Build the app. ``registry`` is loaded from ``settings`` at startup when not given.

    The warm-up runs after start-up, so that the probes answer while it runs, unless
    ``warm_before_serving``: then start-up waits for it, and fails if it fails. A worker sharing
    its port with others (app.server.workers) does that: until start-up ends it takes no connection,
    so none of the traffic its siblings could serve meets it warming up."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        reg = registry if registry is not None else Registry.from_settings(settings)
        forward_executor = ThreadPoolExecutor(1, thread_name_prefix="forward")
        state.png_executor = ThreadPoolExecutor(settings.png_threads, thread_name_prefix="png")
        state.upload_executor = ThreadPoolExecutor(1, thread_name_prefix="upload")  # /encode's image decoding
        service = GenerationService(reg, settings, forward_executor, metrics)
        projection_executor = ThreadPoolExecutor(settings.projection_concurrency, thread_name_prefix="projection")
        state.control = ControlService(service, projection_executor)
        for batcher in service.batchers:
            batcher.start()
        state.service = service
        warm = asyncio.create_task(_warm_up(app, reg, forward_executor))
        try:
            if warm_before_serving:
                await warm
                if state.lifecycle.fatal:
                    raise RuntimeError(state.lifecycle.fatal)
            yield
        finally:
            state.lifecycle.draining = True
            state.lifecycle.ready = False
            metrics.set_ready(False)
            warm.cancel()
            # the warm-up runs on in the forward thread, which the shutdown below waits for: it
            # stops at its next pass instead of finishing every shape (DRAIN_TIMEOUT_S bounds a stop)
            reg.stopping.set()
            # one budget for the whole stop: the requests had DRAIN_TIMEOUT_S (app.server.serving), so the
            # batches get what is left of it; their rows are mostly done or dropped by now
            budget = batch_drain_budget_s(settings.drain_timeout_s, state.lifecycle.stop_started)
            await asyncio.gather(*(b.drain(budget) for b in service.batchers))
            forward_executor.shutdown(wait=True)
            projection_executor.shutdown(wait=True)  # a projection stops at its next step: reg.stopping is set
            state.png_executor.shutdown(wait=True)
            state.upload_executor.shutdown(wait=True)
            if registry is None:  # loaded here: its part threads end with this app
                reg.close()

    otel = settings.opentelemetry
    app = FastAPI(title="latentserve", version="0.1.0", lifespan=lifespan,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  description="On-demand samples from class-conditional GAN and VAE image generators, "
                              "micro-batched across clients. PNGs or JSON latents.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = Lifecycle()
    install_error_handlers(app)

    def served_models() -> list[str]:  # known once the lifespan has loaded the registry
        service = getattr(app.state, "service", None)
        return list(service.registry.models) if service is not None else []

    app.openapi = tailored_openapi(app, settings, served_models)  # type: ignore[method-assign]
    app.include_router(health.router)
    app.include_router(catalog.router)
    app.include_router(generation.router)
    app.include_router(control.router)
    app.include_router(images.router)
    if settings.playground:
        app.include_router(playground.router)
    # outermost last: request id + metrics + access log, then proxy headers, CORS, API keys,
    # load shedding, body limits, the raw ASGI path for sampling, and HEAD as GET
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(FastPath, state=app.state)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, upload_limit=settings.max_upload_bytes)
    app.add_middleware(LoadShedMiddleware, state=app.state)
    keys = settings.all_api_keys()
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, protect_metrics=settings.protect_metrics)
    else:  # said once at start-up: a missing secret (optional in deploy/k8s) leaves the service open
        log.warning("no API keys (LATENTSERVE_API_KEYS, LATENTSERVE_API_KEYS_FILE): every route is open")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "If-None-Match"],
                           expose_headers=["X-Seed", "X-Model-Version", "X-Labels", "X-Request-ID", "ETag", "Retry-After"],
                           max_age=600)
    app.add_middleware(OpenAIErrorMiddleware)  # outside the API keys: their 401 is in OpenAI's shape there too
    app.add_middleware(ProxyHeadersMiddleware, trusted=settings.forwarded_allow_ips)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, state=app.state, routes=app.routes)
    return app
