"""Behind a gateway: API keys, CORS, proxy headers and path prefix, JSON access logs, drain."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.edge.gateway import ApiKeyMiddleware, ProxyHeadersMiddleware
from app.server.logs import JsonFormatter, RequestIdFilter

GAN = "/v1/models/tiny-gan"


async def test_api_keys_guard_everything_but_probes(app_factory):
    async with app_factory(api_keys="k-one,k-two") as (_, client):
        r = await client.post(f"{GAN}/samples", json={"seed": 1})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == "unauthorized"
        assert (await client.post(f"{GAN}/samples", json={"seed": 1}, headers={"Authorization": "Bearer k-two"})).status_code == 200
        assert (await client.post(f"{GAN}/samples", json={"seed": 1}, headers={"X-API-Key": "k-one"})).status_code == 200
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer k-three"})).status_code == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Basic k-one"})).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_metrics_can_be_protected_and_keys_come_from_a_file(app_factory, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# operators\nfile-key\n\n")
    async with app_factory(api_keys_file=keys, protect_metrics=True) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers={"X-API-Key": "file-key"})).status_code == 200


async def test_no_keys_means_open(client):
    assert (await client.get("/v1/models")).status_code == 200


def test_key_check_compares_with_every_key(monkeypatch):
    import app.edge.gateway as gateway

    seen, original = [], gateway.hmac.compare_digest
    monkeypatch.setattr(gateway.hmac, "compare_digest", lambda x, y: seen.append(y) or original(x, y))
    mw = ApiKeyMiddleware(app=None, keys=["a" * 8, "b" * 8, "c" * 8])
    assert mw._authorised({"headers": [(b"x-api-key", b"aaaaaaaa")]})
    assert len(seen) == 3  # no early exit after the first key matched
    assert not mw._authorised({"headers": [(b"x-api-key", b"aaaaaaab")]})


async def test_cors_is_off_by_default_and_allows_configured_origins(app_factory):
    async with app_factory() as (_, client):
        r = await client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    async with app_factory(cors_origins="https://ui.example") as (_, client):
        r = await client.get("/v1/models", headers={"Origin": "https://ui.example"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await client.options(f"{GAN}/samples", headers={"Origin": "https://ui.example",
                                                             "Access-Control-Request-Method": "POST"})
        assert r.status_code == 200
        r = await client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_forwarded_headers_only_from_trusted_proxies(app_factory):
    # httpx's ASGI transport reports the client as 127.0.0.1, trusted by default
    async with app_factory() as (_, client):
        r = await client.get("/openapi.json", headers={"X-Forwarded-Prefix": "/gen"})
        assert r.json().get("servers") == [{"url": "/gen"}]
    async with app_factory(forwarded_allow_ips="10.0.0.0/8") as (_, client):
        r = await client.get("/openapi.json", headers={"X-Forwarded-Prefix": "/gen"})
        assert "servers" not in r.json()


def test_json_log_lines_carry_request_id_and_access_fields():
    record = logging.LogRecord("latentserve.access", logging.INFO, __file__, 1, "POST /x 200", (), None)
    record.method, record.status, record.model, record.rows, record.batch = "POST", 200, "m", 4, [7]
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /x 200" and line["status"] == 200 and line["batch"] == [7]
    assert line["request_id"] == "-" and line["level"] == "info" and line["time"].endswith("Z")


def test_json_log_time_is_utc_to_the_millisecond_across_seconds():
    fmt = JsonFormatter()
    times = []
    for created in (1764489599.9991, 1764489600.0004, 1764489600.5, 1764489599.25, 1764576000.042):
        record = logging.LogRecord("latentserve.access", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        times.append(json.loads(fmt.format(record))["time"])
    # the second's text is cached: it must follow the record's own second, back and forth
    assert times == ["2025-11-30T07:59:59.999Z", "2025-11-30T08:00:00.000Z", "2025-11-30T08:00:00.500Z",
                     "2025-11-30T07:59:59.250Z", "2025-12-01T08:00:00.042Z"]


def test_configured_logging_skips_the_caller_lookup_and_keeps_every_field(monkeypatch):
    import app.server.logs

    monkeypatch.setattr(logging, "_srcfile", logging._srcfile)
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, getattr(logging, flag))
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level, logging.getLogger(name).propagate)
             for name in ("latentserve", "uvicorn", "uvicorn.error")}
    try:
        app.server.logs.configure_logging("info", "json")
        handler = logging.getLogger("latentserve").handlers[0]
        stream = io.StringIO()
        handler.setStream(stream)
        logging.getLogger("latentserve.access").info("POST /x 200", extra={"status": 200, "rows": 2})
        line = json.loads(stream.getvalue())
        assert (line["message"], line["status"], line["rows"], line["logger"]) == ("POST /x 200", 200, 2, "latentserve.access")
        assert logging._srcfile is None and not logging.logThreads  # no frame walk, no thread name per record
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)


async def test_draining_turns_readiness_off_and_refuses_new_work_with_connection_close(app_client):
    app, client = app_client
    app.state.lifecycle.draining = True
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    r = await client.post(f"{GAN}/samples", json={"seed": 1})
    assert r.status_code == 503 and r.headers["connection"] == "close"
    app.state.lifecycle.draining = False


async def test_access_log_line_carries_request_id_model_rows_batch_and_forwarded_client(app_client):
    _, client = app_client
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture()
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("latentserve.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    png = (await client.get("/v1/models/tiny-vae/samples.png", params={"seed": 1})).content
    try:
        r = await client.post(f"{GAN}/samples", json={"n": 3, "seed": 1},
                              headers={"X-Request-ID": "req-42", "X-Forwarded-For": "203.0.113.9"})
        e = await client.post("/v1/models/tiny-vae/encode", params={"label": 1}, content=png,
                              headers={"content-type": "image/png"})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert r.status_code == 200
    (rec,) = [x for x in records if getattr(x, "path", "") == f"{GAN}/samples"]
    line = json.loads(JsonFormatter().format(rec))
    assert line["request_id"] == "req-42" and line["status"] == 200 and line["method"] == "POST"
    assert line["model"] == "tiny-gan" and line["rows"] == 3 and len(line["batch"]) >= 1
    assert line["client"] == "203.0.113.9" and line["latency_ms"] > 0
    assert e.status_code == 200
    (rec,) = [x for x in records if getattr(x, "path", "") == "/v1/models/tiny-vae/encode"]
    line = json.loads(JsonFormatter().format(rec))
    assert line["model"] == "tiny-vae" and line["rows"] == 1 and line["status"] == 200


def test_trusted_proxy_answers_are_cached_within_a_bound():
    mw = ProxyHeadersMiddleware(app=None, trusted=["10.0.0.0/8", "::1"])
    assert mw._trusted("10.1.2.3") and mw._trusted("::1")
    assert not mw._trusted("192.168.0.1") and not mw._trusted("not an address") and not mw._trusted(None)
    assert mw._trusted("10.1.2.3") and not mw._trusted("192.168.0.1")  # the same answers from the cache
    for i in range(10_000):  # addresses from X-Forwarded-For are the client's to choose
        assert mw._trusted(f"10.0.{i // 256 % 256}.{i % 256}") and not mw._trusted(f"172.16.{i // 256 % 256}.{i % 256}")
    assert len(mw._seen) <= 4096


@pytest.mark.parametrize("text", ["", "\n\n", "# rotated; keys below\n\n   \n"])
def test_a_keys_file_without_keys_is_refused_not_open(tmp_path, text):
    """An emptied or rotated keys file gave no keys, and the service ran open, without a word."""
    from app.server.settings import Settings

    keys = tmp_path / "keys"
    keys.write_text(text)
    with pytest.raises(ValueError, match="holds no key"):
        Settings(api_keys_file=keys).all_api_keys()
    with pytest.raises(ValueError, match="PROTECT_METRICS=true needs API keys"):
        Settings(protect_metrics=True).all_api_keys()
    assert Settings(api_keys="a,b", protect_metrics=True).all_api_keys() == ["a", "b"]
    assert Settings().all_api_keys() == []
