"""The raw ASGI helpers: the one body reader of the fast path and the upload routes, and the
receive that hands an already-read body on."""

from __future__ import annotations

import pytest

from app.edge.asgi import read_body, replay
from app.edge.disconnect import ClientGone


def receiver(*messages):
    pending = list(messages)

    async def receive():
        return pending.pop(0)

    return receive


def part(body: bytes, more: bool) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_the_body_is_its_chunks_joined_and_nothing_after_the_last_is_read():
    receive = receiver(part(b"ab", True), part(b"", True), part(b"cd", False), {"type": "http.disconnect"})
    assert await read_body(receive) == b"abcd"
    assert await receive() == {"type": "http.disconnect"}  # left for the disconnect watcher


async def test_an_empty_body_without_a_body_key_is_empty():
    assert await read_body(receiver({"type": "http.request"})) == b""


async def test_a_client_gone_mid_body_is_client_gone():
    with pytest.raises(ClientGone):
        await read_body(receiver(part(b"{\"n\":", True), {"type": "http.disconnect"}))


async def test_the_body_limits_error_passes_through():
    from starlette.exceptions import HTTPException

    async def over_the_limit():
        raise HTTPException(413, "too large")

    with pytest.raises(HTTPException) as e:
        await read_body(over_the_limit)
    assert e.value.status_code == 413


async def test_replay_gives_the_body_once_then_the_clients_messages():
    replayed = replay(b"xyz", receiver({"type": "http.disconnect"}))
    assert await replayed() == part(b"xyz", False)
    assert await replayed() == {"type": "http.disconnect"}
    assert await read_body(replay(b"xyz", receiver())) == b"xyz"
