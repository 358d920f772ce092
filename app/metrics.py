"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.queue = Gauge("latentserve_queue_rows", "rows waiting for a forward pass", ["model"], registry=r)
        self.batch_rows = Histogram("latentserve_batch_rows", "rows per forward pass", ["model"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.forward = Histogram("latentserve_forward_seconds", "seconds per forward pass", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.row_outcomes = Counter("latentserve_rows_total",
                                    "rows by outcome: computed, rejected (queue full), timed_out, cancelled (client gone), failed",
                                    ["model", "outcome"], registry=r)
        self.shed = Counter("latentserve_shed_requests_total", "requests refused (429) before parsing: the model's queue was full",
                            ["model"], registry=r)
        self.ready = Gauge("latentserve_ready", "1 when models are loaded, warmed up and batchers run", registry=r)

    # the BatcherMetrics protocol
    def batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(model).observe(rows)
        self.forward.labels(model).observe(seconds)

    def rows(self, model: str, outcome: str, count: int) -> None:
        self.row_outcomes.labels(model, outcome).inc(count)

    def queue_rows(self, model: str, rows: int) -> None:
        self.queue.labels(model).set(rows)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(method, route, code).inc()
        self.latency.labels(method, route, code).observe(seconds)
