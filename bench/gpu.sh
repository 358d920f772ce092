#!/usr/bin/env bash
# GPU figures: the in-process limit (batch 1 to 1024) and latentserve with and without batching,
# on a CUDA machine, in under 8 minutes. Wheels the machine lacks (fastapi, uvicorn, pydantic,
# ...) are installed from ./wheels when present (fill it on a networked host with
# `pip download -d wheels fastapi uvicorn pydantic-settings prometheus-client python-multipart uvloop httptools`).
# Needs wrk on the machine. Not run in this repository's history yet: no GPU was lent.
set -euo pipefail
cd "$(dirname "$0")/.."
if ls wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install --quiet --no-index --find-links wheels fastapi uvicorn pydantic-settings \
        prometheus-client python-multipart uvloop httptools || true
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 450 python3 -m bench.run --device cuda --servers latentserve,latentserve-nobatch \
    --loads c1,c64,c256 --duration 5 --runs 3 --limit-batches 1,8,64,256,1024 --max-batch-rows 256 \
    --out-json "${OUT:-.}/gpu-results.json" --out-md "${OUT:-.}/gpu-benchmarks.md"
