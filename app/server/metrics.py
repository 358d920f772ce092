"""Prometheus metrics, one registry per app (so tests can build many apps). With several worker
processes (``LATENTSERVE_WORKERS``), each writes its values to ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` on any of them adds up all of them (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("latentserve_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        # by status too: fast 429s under overload would otherwise hide the latency of the 200s
        self.latency = Histogram("latentserve_request_duration_seconds", "HTTP request latency by route and status",
                                 ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        # across worker processes (LATENTSERVE_WORKERS): rows queued add up; the service is ready
        # while any live worker is (a worker takes connections only once warm, and stops taking
        # them when it drains), and how many are ready is a gauge of its own
        self.queue = Gauge("latentserve_queue_rows", "rows waiting for a forward pass", ["model"], registry=r,
                           multiprocess_mode="livesum")
        self.batch_rows = Histogram("latentserve_batch_rows", "rows per forward pass", ["model"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.forward = Histogram("latentserve_forward_seconds", "seconds per forward pass", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.row_outcomes = Counter("latentserve_rows_total",
                                    "rows by outcome: computed, rejected (queue full), timed_out, cancelled (client gone), failed",
                                    ["model", "outcome"], registry=r)
        self.shed = Counter("latentserve_shed_requests_total", "requests refused (429) before parsing: the model's queue was full",
                            ["model"], registry=r)
        self.ready = Gauge("latentserve_ready", "1 when models are loaded, warmed up and batchers run", registry=r,
                           multiprocess_mode="livemax")
        self.workers_ready = Gauge("latentserve_workers_ready", "worker processes that are ready (LATENTSERVE_WORKERS)",
                                   registry=r, multiprocess_mode="livesum")
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:  # every worker's values, read from their files at each scrape
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=multiproc_dir)
        else:
            self.exposed = self.registry

        # labels() validates and locks on every call (~5 us, several times per request on the
        # event loop); the children are looked up once per label set and kept. Every label set
        # is bounded: models, outcomes, route templates, methods and status codes.
        self._children: dict[tuple, Any] = {}

    def set_ready(self, ready: bool) -> None:
        self.ready.set(int(ready))
        self.workers_ready.set(int(ready))

    def exposition(self) -> bytes:
        return generate_latest(self.exposed)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # the BatcherMetrics protocol
    def batch(self, model: str, rows: int, seconds: float) -> None:
        self._child(self.batch_rows, model).observe(rows)
        self._child(self.forward, model).observe(seconds)

    def rows(self, model: str, outcome: str, count: int) -> None:
        self._child(self.row_outcomes, model, outcome).inc(count)

    def queue_rows(self, model: str, rows: int) -> None:
        self._child(self.queue, model).set(rows)

    def shed_request(self, model: str) -> None:
        self._child(self.shed, model).inc()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self._child(self.requests, method, route, code).inc()
        self._child(self.latency, method, route, code).observe(seconds)
