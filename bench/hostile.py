"""Hostile uploads to ``/encode``: the cases, and a run against a real server that records each
answer's status, its time and the server's memory (VmRSS now, VmHWM = the peak ever).

    python -m bench.hostile            # the shipped fashion-vae, default upload limits

The same cases run in CI on the tiny models (tests/app/edge/test_hostile_uploads.py).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encoded(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def small_png() -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L"))


def declared_bomb(side: int) -> bytes:
    """A PNG header that claims side x side pixels (8-bit gray) followed by a little data."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b"")


def real_bomb(side: int) -> bytes:
    """A complete, valid all-black side x side PNG: tiny on the wire, side*side bytes decoded."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b"")


def text_chunk_bomb() -> bytes:
    """A valid 28x28 PNG carrying a compressed text chunk that inflates to 64 MiB."""
    png = small_png()
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return png[:33] + ztxt + png[33:]  # after the signature (8) and IHDR (25)


def animated(fmt: str) -> bytes:
    frames = [Image.new("L", (28, 28), v) for v in (0, 128, 255)]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def corrupt_crc() -> bytes:
    png = bytearray(small_png())
    idat = png.index(b"IDAT")
    png[idat + 6] ^= 0xFF  # inside the compressed data: the chunk's CRC no longer matches
    return bytes(png)


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str
    body: Callable[[], bytes]
    expect: int  # HTTP status
    code: str | None = None  # error code in the JSON body


def cases(max_upload_bytes: int) -> list[Case]:
    """Every hostile upload with the status it must get, for a server with this upload limit."""
    return [
        Case("empty body", "image/png", lambda: b"", 422, "invalid_request"),
        Case("truncated PNG (half)", "image/png", lambda: small_png()[: len(small_png()) // 2], 422, "invalid_request"),
        Case("truncated PNG (signature only)", "image/png", lambda: PNG_SIGNATURE, 422, "invalid_request"),
        Case("truncated JPEG (header only)", "image/jpeg", lambda: b"\xff\xd8\xff\xe0", 422, "invalid_request"),
        Case("corrupt PNG (bad CRC)", "image/png", corrupt_crc, 422, "invalid_request"),
        Case("declared 65535x65535 PNG (header bomb)", "image/png", lambda: declared_bomb(65535), 413, "payload_too_large"),
        Case("declared 5000x5000 PNG", "image/png", lambda: declared_bomb(5000), 413, "payload_too_large"),
        Case("valid 8000x8000 PNG of 64 Mpx (decompression bomb)", "image/png", lambda: real_bomb(8000), 413,
             "payload_too_large"),
        Case("valid 4096x4096 PNG at the pixel limit", "image/png", lambda: real_bomb(4096), 200),
        Case("zTXt chunk inflating to 64 MiB", "image/png", text_chunk_bomb, 422, "invalid_request"),
        Case("plain text", "image/png", lambda: b"hello, this is not an image\n" * 10, 415, "unsupported_media_type"),
        Case("PDF header", "application/octet-stream", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415,
             "unsupported_media_type"),
        Case("ZIP archive", "application/octet-stream", lambda: b"PK\x03\x04" + bytes(200), 415, "unsupported_media_type"),
        Case("JSON body", "application/json", lambda: b'{"image": "x"}', 415, "unsupported_media_type"),
        Case("animated GIF", "image/gif", lambda: animated("GIF"), 422, "invalid_request"),
        Case("animated PNG (APNG)", "image/png", lambda: animated("PNG"), 422, "invalid_request"),
        Case("16-bit grayscale PNG", "image/png",
             lambda: encoded(Image.fromarray(np.full((40, 30), 40000, dtype=np.uint16))), 200),
        Case("palette PNG", "image/png", lambda: encoded(Image.new("RGB", (28, 28), (200, 10, 10)).convert("P")), 200),
        Case("1-bit PNG", "image/png", lambda: encoded(Image.new("1", (50, 50), 1)), 200),
        Case("40000x1 strip (a 120-byte PNG; padded to a square it was 1.6 GB)", "image/png",
             lambda: encoded(Image.new("L", (40000, 1), 255)), 200),
        Case("LAB TIFF (no grayscale conversion)", "image/tiff", lambda: encoded(Image.new("LAB", (30, 20)), "TIFF"), 422,
             "invalid_request"),
        Case("CMYK JPEG", "image/jpeg", lambda: encoded(Image.new("CMYK", (28, 28), (0, 0, 0, 0)), "JPEG"), 200),
        Case("body 4x over the upload limit", "image/png", lambda: bytes(4 * max_upload_bytes), 413, "payload_too_large"),
    ]


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def main(argv: list[str] | None = None) -> int:
    import httpx

    from bench.servers import (
        REPO,
        Server,
        free_port,
        http,
        latentserve_spec,
        proc_kb,
        rss_kb,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=REPO / "weights")
    ap.add_argument("--repeat", type=int, default=3, help="sends of each case (time: the slowest)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "hostile.json")
    args = ap.parse_args(argv)
    port = free_port()
    server = Server(latentserve_spec(port, args.weights, {"MODELS": "fashion-vae"}), port, Path("/tmp"))
    limit = 2 * 1024 * 1024  # the default LATENTSERVE_MAX_UPLOAD_BYTES
    server.start()
    rows, ok = [], True

    def hwm_kb() -> int:
        return proc_kb(server.proc.pid, "status", "VmHWM:")

    try:
        server.wait_ready()
        url = f"{server.base}/v1/models/fashion-vae/encode?label=0"
        base_rss, base_hwm = rss_kb(server.proc.pid), hwm_kb()
        with httpx.Client(timeout=60) as client:
            all_cases = [*cases(limit),
                         Case("64 MiB chunked body (no Content-Length)", "image/png", lambda: bytes(64 << 20), 413,
                              "payload_too_large")]
            for case in all_cases:
                body = case.body()
                statuses, times = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    try:
                        content = chunked(body) if "chunked" in case.name else body
                        r = client.post(url, content=content, headers={"content-type": case.content_type})
                        status, code = r.status_code, (r.json().get("error", {}).get("code") if r.status_code >= 400 else None)
                    except httpx.TransportError as e:  # the server may close a connection whose body it refused
                        status, code = f"closed ({type(e).__name__})", None
                    times.append(time.perf_counter() - t0)
                    statuses.append(status)
                good = all(s == case.expect for s in statuses) and (case.code is None or code == case.code)
                ok &= good
                rows.append({"case": case.name, "bytes": len(body), "expect": case.expect, "statuses": statuses,
                             "code": code, "max_ms": round(max(times) * 1000, 1), "ok": good,
                             "rss_mib": round(rss_kb(server.proc.pid) / 1024, 1)})
                print(f"{case.name:55s} {len(body):>10,d} B  {statuses}  {max(times) * 1000:8.1f} ms  "
                      f"{'ok' if good else 'UNEXPECTED'}", flush=True)
        ready, _, _ = http("GET", server.base + "/readyz")
        end_rss, end_hwm = rss_kb(server.proc.pid), hwm_kb()
    finally:
        server.stop()
    report = {"command": "python -m bench.hostile " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "max_upload_bytes": limit,
              "rss_before_mib": round(base_rss / 1024, 1), "rss_after_mib": round(end_rss / 1024, 1),
              "peak_rss_before_mib": round(base_hwm / 1024, 1), "peak_rss_after_mib": round(end_hwm / 1024, 1),
              "ready_after": ready, "cases": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=2))
    return 0 if ok and ready == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
