"""The playground with the shipped models in Debian's chromium: how long until the first samples
are on screen (median of several page loads), and the README's screenshot.

    python -m bench.playground                      # 5 loads, writes docs/playground.png

Needs chromium (apt-get install chromium) and playwright (pip install playwright)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from bench import servers

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic"]


async def until(page, js: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not await page.evaluate(js):
        if time.monotonic() > end:
            raise TimeoutError(js)
        await asyncio.sleep(0.02)


async def measure(base: str, loads: int, shot: Path | None) -> list[float]:
    loaded = "(() => { const i = document.getElementById('samples-img'); return i.complete && i.naturalWidth > 0; })()"
    times = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        for _ in range(loads):
            page = await browser.new_page(viewport={"width": 1440, "height": 1100})
            await page.goto(base + "/")
            await until(page, loaded)
            times.append(await page.evaluate("performance.getEntriesByName('first-samples')[0].startTime"))
            await page.close()
        if shot is not None:
            page = await browser.new_page(viewport={"width": 1440, "height": 1100})
            await page.goto(base + "/")
            await until(page, loaded)
            await until(page, "document.getElementById('map-img').naturalWidth > 0")
            await page.locator("#sliders input").nth(0).fill("2.5")
            await page.click("#swap")
            box = await page.locator("#map-img").bounding_box()
            await page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
            coat = httpx.get(base + "/v1/models/fashion-vae/samples.png?seed=3&label=Coat").content
            await page.select_option("#upload-label", "4")
            await page.set_input_files("#file", files=[{"name": "coat.png", "mimeType": "image/png", "buffer": coat}])
            for img in ("strip-img", "map-decoded", "up-recon", "up-vars", "up-proj"):
                await until(page, f"document.getElementById('{img}').naturalWidth > 0")
            await page.wait_for_timeout(300)
            await page.screenshot(path=str(shot), full_page=True)
        await browser.close()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.playground", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--screenshot", type=Path, default=servers.REPO / "docs" / "playground.png")
    args = p.parse_args(argv)
    port = servers.free_port()
    spec = servers.latentserve_spec(port, servers.REPO / "weights", {})
    with tempfile.TemporaryDirectory() as logs:
        server = servers.Server(spec, port, Path(logs))
        server.start()
        try:
            server.wait_ready()
            times = asyncio.run(measure(f"http://127.0.0.1:{port}", args.loads, args.screenshot))
        finally:
            server.stop()
    print(f"first samples on screen after navigation: median {statistics.median(times):.0f} ms "
          f"(each load: {', '.join(f'{t:.0f}' for t in times)} ms), chromium headless, shipped models")
    if args.screenshot:
        print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
