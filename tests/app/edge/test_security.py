"""The security review's findings, each pinned by a test: bounded bodies, log lines that cannot
be forged, model names that never reach the file system, keys and paths kept out of answers."""

from __future__ import annotations

import json
import logging

import pytest

from app.engine.registry import Registry
from app.server.logs import JsonFormatter, TextFormatter
from app.server.settings import Settings
from models.card import ModelLoadError
from tests.conftest import GAN_LATENT

GAN = "/v1/models/tiny-gan"


async def test_json_body_over_the_limit_is_refused_before_it_is_read(app_factory):
    async with app_factory(max_body_bytes=4096) as (_, client):
        body = json.dumps({"latents": [[0.0] * GAN_LATENT] * 200}).encode()
        assert len(body) > 4096
        r = await client.post(f"{GAN}/decode", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413
        err = r.json()["error"]
        assert err["code"] == "payload_too_large" and "LATENTSERVE_MAX_BODY_BYTES" in err["message"]
        ok = await client.post(f"{GAN}/decode", json={"latents": [[0.0] * GAN_LATENT] * 4})
        assert ok.status_code == 200


async def test_streamed_json_body_is_cut_at_the_limit(app_factory):
    sent = 0

    async def stream():
        nonlocal sent
        for _ in range(1000):  # 1 MB of '[' without a Content-Length
            sent += 1000
            yield b"[" * 1000

    async with app_factory(max_body_bytes=8192) as (_, client):
        r = await client.post(f"{GAN}/samples", content=stream(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert sent <= 8192 + 2000


async def test_uploads_have_their_own_limit(app_factory):
    async with app_factory(max_body_bytes=2048, max_upload_bytes=8192) as (_, client):
        blob = b"\0" * 4000  # over the JSON limit, under the upload limit: reaches the decoder
        r = await client.post("/v1/models/tiny-vae/encode", params={"label": 0}, content=blob,
                              headers={"content-type": "image/png"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = await client.post("/v1/models/tiny-vae/encode", params={"label": 0}, content=b"\0" * 9000,
                              headers={"content-type": "image/png"})
        assert r.status_code == 413 and "LATENTSERVE_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("latentserve.access", logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize("path", ["/v1/models/x\nFAKE 200 ok/samples", "/a\r\n\x1b[31mred", "/\x00\x7f"])
def test_text_log_lines_cannot_be_forged(path):
    line = TextFormatter("%(message)s").format(record("%s %s %d", "POST", path, 404))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert line.startswith("POST /") and line.endswith(" 404")


def test_json_log_lines_stay_one_json_object():
    rec = record("%s %s", "POST", "/x\nFAKE")
    rec.request_id = "abc"
    line = JsonFormatter().format(rec)
    assert "\n" not in line and json.loads(line)["message"] == "POST /x\nFAKE"


@pytest.mark.parametrize("path", ["/v1/models/..%2F..%2Fetc%2Fpasswd", "/v1/models/%2e%2e",
                                  "/v1/models/tiny-gan%00.json", "/v1/models/" + "a" * 5000])
async def test_model_names_from_urls_never_reach_the_file_system(client, path):
    r = await client.get(path)
    assert r.status_code == 404
    assert "passwd" not in r.text and "/tmp" not in r.text and len(r.text) < 1000


@pytest.mark.parametrize("name", ["../tiny-gan", "/etc/passwd", "tiny-gan/../tiny-gan", ".hidden", "a" * 65])
def test_model_names_from_settings_are_checked_before_any_file_is_opened(tiny_weights, name):
    with pytest.raises(ModelLoadError, match="not a valid model name"):
        Registry.from_settings(Settings(weights_dir=tiny_weights, models=[name], device="cpu"))


async def test_api_keys_never_appear_in_logs_or_answers(app_factory, caplog):
    caplog.set_level(logging.DEBUG)
    async with app_factory(api_keys="s3cret-key-1,other-key") as (_, client):
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await client.get("/v1/models", headers={"X-API-Key": "s3cret-key-1"})
        assert ok.status_code == 200 and "s3cret" not in ok.text
        assert "s3cret" not in (await client.get("/openapi.json")).text
    assert "s3cret" not in caplog.text and "other-key" not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "latentserve.access"]
    assert len(access) >= 3 and any("401" in m for m in access)  # the logs were captured: the check is not vacuous
    assert "s3cret" not in repr(Settings(api_keys="s3cret-key-1"))
