"""The baseline: what one would write without latentserve. One plain FastAPI endpoint on the same
route and body; a sync (`def`) handler, so FastAPI runs it in its threadpool; one forward pass per
request (a batch of the request's n images), latents from seeded torch.Generators, PNG out.

    BENCH_WEIGHTS_DIR=weights BENCH_MODEL=fashion-gan BENCH_TORCH_THREADS=2 \\
        uvicorn bench.baseline_fastapi:app --host 127.0.0.1 --port 8001 --workers 1
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Response
from PIL import Image
from pydantic import BaseModel, Field

from models.card import channels_last_on_cpu, load_model
from models.images import tile, to_uint8
from models.latents import seeded_latent

WEIGHTS_DIR = Path(os.environ.get("BENCH_WEIGHTS_DIR", "weights"))
MODEL = os.environ.get("BENCH_MODEL", "fashion-gan")
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
PNG_LEVEL = int(os.environ.get("BENCH_PNG_LEVEL", "1"))
if int(os.environ.get("BENCH_TORCH_THREADS", "0")) > 0:
    torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))

module, card = load_model(WEIGHTS_DIR / f"{MODEL}.json", device=DEVICE)
if os.environ.get("BENCH_CHANNELS_LAST", "1") == "1":
    channels_last_on_cpu(module, DEVICE)  # the layout latentserve uses, so the passes cost the same
LATENT_DIM = int(card["config"]["latent_dim"])
NUM_CLASSES = len(card["classes"])
app = FastAPI(title="baseline")


class SampleBody(BaseModel):
    n: int = Field(1, ge=1, le=64)
    seed: int = Field(0, ge=0, le=2**32 - 1)


def png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


@app.post("/v1/models/{model}/samples")
def samples(model: str, body: SampleBody) -> Response:
    if model != MODEL:
        raise HTTPException(404, f"no model named {model}")
    pairs = [seeded_latent(body.seed + i, LATENT_DIM, NUM_CLASSES) for i in range(body.n)]
    z = torch.stack([p[0] for p in pairs]).to(DEVICE)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=DEVICE)
    with torch.inference_mode():
        pixels = to_uint8(module.generate(z, y)).cpu().numpy()
    return Response(png(pixels[0] if body.n == 1 else tile(pixels, 8)), media_type="image/png")
