"""The baseline: what one would write without latentserve. One plain FastAPI endpoint on the same
route and body; a sync (`def`) handler, so FastAPI runs it in its threadpool; one forward pass per
request (a batch of the request's n images), latents from seeded torch.Generators, PNG out.

    BENCH_WEIGHTS_DIR=weights BENCH_MODEL=fashion-gan BENCH_TORCH_THREADS=2 \\
        uvicorn bench.baseline_fastapi:app --host 127.0.0.1 --port 8001 --workers 1

`Baseline` is the handler's work without HTTP: bench.limit times it in process, so that the
baseline's HTTP overhead (its c=1 p50 minus that time) is not charged with its own forward pass.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Response
from PIL import Image
from pydantic import BaseModel, Field

from models.card import channels_last_on_cpu, load_model
from models.images import tile, to_uint8
from models.latents import seeded_latent


class Baseline:
    """The model, eager, as loaded by the plain server, and what its handler computes."""

    def __init__(self, weights_dir: Path, model: str, device: torch.device, png_level: int = 1,
                 channels_last: bool = True):
        self.name, self.device, self.png_level = model, device, png_level
        self.module, card = load_model(weights_dir / f"{model}.json", device=device)
        if channels_last:
            channels_last_on_cpu(self.module, device)  # the layout latentserve uses, so the passes cost the same
        self.latent_dim = int(card["config"]["latent_dim"])
        self.num_classes = len(card["classes"])

    def png(self, pixels) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=self.png_level)
        return buf.getvalue()

    def sample_png(self, n: int, seed: int) -> bytes:
        pairs = [seeded_latent(seed + i, self.latent_dim, self.num_classes) for i in range(n)]
        z = torch.stack([p[0] for p in pairs]).to(self.device)
        y = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            pixels = to_uint8(self.module.generate(z, y)).cpu().numpy()
        return self.png(pixels[0] if n == 1 else tile(pixels, 8))


baseline: Baseline | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global baseline
    if int(os.environ.get("BENCH_TORCH_THREADS", "0")) > 0:
        torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))
    baseline = Baseline(Path(os.environ.get("BENCH_WEIGHTS_DIR", "weights")), os.environ.get("BENCH_MODEL", "fashion-gan"),
                        torch.device(os.environ.get("BENCH_DEVICE", "cpu")), int(os.environ.get("BENCH_PNG_LEVEL", "1")),
                        os.environ.get("BENCH_CHANNELS_LAST", "1") == "1")
    yield


app = FastAPI(title="baseline", lifespan=lifespan)


class SampleBody(BaseModel):
    n: int = Field(1, ge=1, le=64)
    seed: int = Field(0, ge=0, le=2**32 - 1)


@app.post("/v1/models/{model}/samples")
def samples(model: str, body: SampleBody) -> Response:
    if model != baseline.name:
        raise HTTPException(404, f"no model named {model}")
    return Response(baseline.sample_png(body.n, body.seed), media_type="image/png")
