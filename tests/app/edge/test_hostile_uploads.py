"""Hostile uploads to /encode, through the whole app: each gets its documented status and error
code, and the service goes on serving (the same cases against a real server with memory and time
figures: python -m bench.hostile)."""

from __future__ import annotations

import pytest

from bench.hostile import cases, small_png

LIMIT = 256 * 1024
VAE = "/v1/models/tiny-vae/encode"


@pytest.mark.parametrize("case", cases(LIMIT), ids=lambda c: c.name)
async def test_hostile_upload_gets_its_status_and_the_service_goes_on(app_factory, case):
    async with app_factory(max_upload_bytes=LIMIT) as (_, client):
        r = await client.post(VAE, params={"label": 0}, content=case.body(), headers={"content-type": case.content_type})
        assert r.status_code == case.expect, r.text
        if case.code is not None:
            assert r.json()["error"]["code"] == case.code
            assert r.json()["error"]["message"]
        else:
            latents = r.json()["latents"]
            assert len(latents) == 1 and len(latents[0]["mu"]) == 4
        ok = await client.post(VAE, params={"label": 0}, content=small_png(), headers={"content-type": "image/png"})
        assert ok.status_code == 200


async def test_body_over_the_limit_without_content_length_is_refused_while_streaming(app_factory):
    sent = 0

    async def stream():
        nonlocal sent
        for _ in range(64):  # 4 MiB in 64 KiB chunks, far over the 256 KiB limit
            sent += 65536
            yield bytes(65536)

    async with app_factory(max_upload_bytes=LIMIT) as (_, client):
        r = await client.post(VAE, params={"label": 0}, content=stream(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert sent <= LIMIT + 2 * 65536  # reading stopped at the limit, not at the end of the body


async def test_multipart_with_too_many_files_is_refused(app_factory):
    async with app_factory(max_images_per_request=2) as (_, client):
        png = small_png()
        files = [("file", (f"{i}.png", png, "image/png")) for i in range(5)]
        r = await client.post(VAE, params={"label": 0}, files=files)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text  # as the README says
        assert r.json()["error"]["message"]
