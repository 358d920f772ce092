"""bench.rawhttp tells "no response at all" from "a response cut off": the drain test and the
reliability runs count on its verdicts, so each one is checked against a socket server that
answers in exactly that way."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from bench import rawhttp


@pytest.fixture
def serve_once() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A listener on a free port whose first connection is handled by the given function."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handle: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                handle(conn)
        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        return listener.getsockname()[1]

    yield start
    for t in threads:
        t.join(5)
    for listener in listeners:
        listener.close()


def test_a_complete_answer_gives_its_status_and_body(serve_once):
    port = serve_once(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    assert rawhttp.post(port, "/x", b"{}") == ("200", b"hello")


def test_an_answer_shorter_than_its_content_length_is_cut_off(serve_once):
    port = serve_once(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello"))
    kind, data = rawhttp.post(port, "/x", b"{}")
    assert kind == "cut_off" and data.endswith(b"hello")


def test_a_connection_closed_without_a_byte_is_a_reset(serve_once):
    port = serve_once(lambda c: None)
    assert rawhttp.post(port, "/x", b"{}") == ("reset", b"")


def test_a_closed_port_is_refused():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    assert rawhttp.post(port, "/x", b"{}") == ("refused", b"")


def test_a_reset_during_the_handshake_is_a_reset_not_an_exception(monkeypatch):
    """Seen on a 16-core machine during the drain test: the listener closed while the connection
    sat in its backlog, and connect() itself raised ECONNRESET."""
    def reset(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.setattr(rawhttp.socket, "create_connection", reset)
    assert rawhttp.post(1, "/x", b"{}") == ("reset", b"")
