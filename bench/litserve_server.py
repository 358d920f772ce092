"""LitServe serving the same card, with LitServe's own batching: decode_request -> one request's
latents, batch -> concatenated, predict -> one generator forward pass, unbatch -> per request,
encode_response -> PNG. Same route path and body as latentserve.

    BENCH_PORT=8002 BENCH_WEIGHTS_DIR=weights BENCH_MODEL=fashion-gan python -m bench.litserve_server

Each forward pass adds to the counters in BENCH_STATS_FILE ("passes rows requests"), so the
harness can report the batch sizes LitServe formed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException, Response
from PIL import Image

from models.card import channels_last_on_cpu, load_model
from models.images import tile, to_uint8
from models.latents import seeded_latent

MODEL = os.environ.get("BENCH_MODEL", "fashion-gan")


def png(pixels: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


class SamplesAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        threads = int(os.environ.get("BENCH_TORCH_THREADS", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        weights = Path(os.environ.get("BENCH_WEIGHTS_DIR", "weights"))
        self.torch_device = torch.device(device)  # (LitServe sets self.device to the string after setup)
        self.module, card = load_model(weights / f"{MODEL}.json", device=self.torch_device)
        if os.environ.get("BENCH_CHANNELS_LAST", "1") == "1":
            channels_last_on_cpu(self.module, self.torch_device)  # the layout latentserve uses
        self.latent_dim = int(card["config"]["latent_dim"])
        self.num_classes = len(card["classes"])
        self.png_level = int(os.environ.get("BENCH_PNG_LEVEL", "1"))
        self.stats_path = os.environ.get("BENCH_STATS_FILE")
        self.passes = self.rows = self.requests = 0
        self._record()

    def _record(self) -> None:
        if self.stats_path:
            tmp = f"{self.stats_path}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{self.passes} {self.rows} {self.requests}\n")
            os.replace(tmp, self.stats_path)

    def decode_request(self, request: dict) -> tuple[torch.Tensor, torch.Tensor]:
        n, seed = int(request.get("n", 1)), int(request.get("seed", 0))
        if not 1 <= n <= 64 or not 0 <= seed <= 2**32 - 1:
            raise HTTPException(422, "n must be in 1..64 and seed in 0..2^32-1")  # fails the whole batch
        pairs = [seeded_latent(seed + i, self.latent_dim, self.num_classes) for i in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)

    def batch(self, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        return torch.cat([z for z, _ in inputs]), torch.cat([y for _, y in inputs]), [len(z) for z, _ in inputs]

    def predict(self, x: tuple[torch.Tensor, torch.Tensor, list[int]]) -> tuple[np.ndarray, list[int]]:
        z, y, sizes = x
        with torch.inference_mode():
            pixels = to_uint8(self.module.generate(z.to(self.torch_device), y.to(self.torch_device))).cpu().numpy()
        self.passes += 1
        self.rows += len(z)
        self.requests += len(sizes)
        self._record()
        return pixels, sizes

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        pixels, sizes = output
        return np.split(pixels, np.cumsum(sizes)[:-1])

    def encode_response(self, pixels: np.ndarray) -> Response:
        image = pixels[0] if len(pixels) == 1 else tile(pixels, 8)
        return Response(png(image, self.png_level), media_type="image/png")


def main() -> None:
    device = os.environ.get("BENCH_DEVICE", "cpu")
    api = SamplesAPI(max_batch_size=int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64")),
                     batch_timeout=float(os.environ.get("BENCH_BATCH_TIMEOUT", "0.005")),
                     api_path=f"/v1/models/{MODEL}/samples")
    accelerator = "cuda" if device.startswith("cuda") else device
    server = ls.LitServer(api, accelerator=accelerator, devices=1 if accelerator != "cpu" else "auto",
                          workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=int(os.environ.get("BENCH_PORT", "8000")), num_api_servers=1,
               log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
