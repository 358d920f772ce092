"""The server's lifecycle in one typed object (``app.state.lifecycle``): set by the lifespan (ready,
fatal), the signal handling in app.server.serving (stopping, draining, stop_started) and
``python -m app`` (on_fatal); read by readiness, the routes, the fast path, load shedding and the
middleware that closes connections once a shutdown has begun."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Lifecycle:
    ready: bool = False  # models loaded and warmed up, batchers running
    draining: bool = False  # refusing new work: 503 with Connection: close (a single process shutting down)
    stopping: bool = False  # a shutdown has begun: readiness says "draining", every answer closes its connection
    fatal: str | None = None  # why the service will never become ready (a failed warm-up)
    stop_started: float | None = None  # time.monotonic() of the shutdown's start: the batches drain with what is left
    on_fatal: Callable[[], None] | None = None  # called once on a fatal error (python -m app stops the server)

    @property
    def serving(self) -> bool:
        """Takes new work: ready and not draining."""
        return self.ready and not self.draining
