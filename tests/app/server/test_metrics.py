"""app.server.metrics: one registry per app, values as Prometheus text, children kept per label set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from app.server.metrics import Metrics


def samples(m: Metrics) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_metric_counts_what_it_says():
    m = Metrics()
    m.request("POST", "/v1/models/{model}/samples", 200, 0.004)
    m.request("POST", "/v1/models/{model}/samples", 200, 0.2)
    m.request("GET", "/healthz", 503, 0.001)
    m.batch("gan", 32, 0.03)
    m.rows("gan", "computed", 32)
    m.rows("gan", "rejected", 5)
    m.queue_rows("gan", 7)
    m.shed_request("gan")
    m.set_ready(True)
    got = samples(m)
    route = ("method", "POST"), ("route", "/v1/models/{model}/samples"), ("status", "200")
    assert got[("latentserve_requests_total", route)] == 2
    assert got[("latentserve_request_duration_seconds_count", route)] == 2
    assert got[("latentserve_request_duration_seconds_bucket", tuple(sorted((*route, ("le", "0.005")))))] == 1
    assert got[("latentserve_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "503")))] == 1
    assert got[("latentserve_batch_rows_sum", (("model", "gan"),))] == 32
    assert got[("latentserve_rows_total", (("model", "gan"), ("outcome", "computed")))] == 32
    assert got[("latentserve_rows_total", (("model", "gan"), ("outcome", "rejected")))] == 5
    assert got[("latentserve_queue_rows", (("model", "gan"),))] == 7
    assert got[("latentserve_shed_requests_total", (("model", "gan"),))] == 1
    assert got[("latentserve_ready", ())] == 1 and got[("latentserve_workers_ready", ())] == 1
    m.set_ready(False)
    assert samples(m)[("latentserve_ready", ())] == 0


def test_two_apps_have_separate_registries():
    a, b = Metrics(), Metrics()
    a.shed_request("gan")
    assert samples(a)[("latentserve_shed_requests_total", (("model", "gan"),))] == 1
    assert ("latentserve_shed_requests_total", (("model", "gan"),)) not in samples(b)
