"""HTTP/1.1 over a raw socket, one request per connection, so that "no response at all" (refused,
or reset before any byte) and "a response cut off" are told apart exactly. Used by the drain
test and the long reliability runs."""

from __future__ import annotations

import socket
import threading
import time


def post(port: int, path: str, body: bytes, timeout: float = 30.0) -> tuple[str, bytes]:
    """POST a JSON body on a fresh connection: ("refused" | "reset" | "cut_off" | status, body)."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused", b""
    except ConnectionResetError:  # reset during the handshake: the listener closed with it in the backlog
        return "reset", b""
    data = b""
    with sock:
        try:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return ("reset" if not data else "cut_off"), data
    if not data:
        return "reset", data  # closed without a byte of response
    head, sep, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if not sep or "content-length" not in headers or len(payload) != int(headers["content-length"]):
        return "cut_off", data
    return lines[0].split()[1], payload


def hang_up_after(sock: socket.socket, path: str, body: bytes, after_s: float,
                  go: threading.Barrier | None = None) -> None:
    """On a connected socket: (wait for ``go``,) send a request, wait ``after_s`` and close the
    connection without reading the answer."""
    with sock:
        if go is not None:
            go.wait(30)
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        time.sleep(after_s)
