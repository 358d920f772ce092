#!/usr/bin/env bash
# GPU figures in one call of a few minutes, for a CUDA machine with no network:
#   1. python -m bench.gpu_check: shapes kept by calibration, batch invariance, pixels against the
#      CPU's, forward speed at 256 and 1024 rows in float32 / float16 / bfloat16;
#   2. python -m bench.run: the in-process limit (batches 1 to 1024) and latentserve with and
#      without batching at c=1, c=64, c=256 and c=16 x n=16, MAX_BATCH_ROWS=256;
#   3. python -m bench.replicas: 1, 2, 4 and 8 latentserve processes sharing the GPU at a total c=256;
#   4. python -m bench.replicas --workers: one server with LATENTSERVE_WORKERS=1, 4 and 8 at c=256;
#   5. the service's API tests with LATENTSERVE_DEVICE=cuda (tests that build their settings from
#      the environment then run on the GPU).
# Everything lands in $OUT (default: ./gpu-out). What the machine lacks travels with the tree:
#   .whl/   wheels (fastapi, uvicorn, pydantic, ...; `bash bench/gpu-prepare.sh` fills .whl/ and .tools/),
#           installed with --no-deps into /tmp/site; wheels/ is used the same way when .whl/ is absent
#   .tools/ wrk: a wrapper script .tools/wrk running .tools/wrk.bin with the libraries it links
#           in .tools/lib (libluajit, libssl, libcrypto; copied from a Debian host with wrk)
# `bash bench/gpu.sh check,run,replicas,workers,tests` (the default) names the steps to run.
# GPU_SH_DEVICE=cpu runs the same steps on a CPU (a dry run of the script, not GPU figures).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
DEVICE="${GPU_SH_DEVICE:-cuda}"
STEPS=",${1:-check,run,replicas,workers,tests},"
export PYTHONUNBUFFERED=1

for dir in .whl wheels; do
    if ls "$dir"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
        break
    fi
done
if [ -x .tools/wrk ]; then
    export PATH="$PWD/.tools:$PATH"
fi
wrk -v 2>&1 | head -1
python3 - <<EOF || exit 1
import torch, fastapi, uvicorn, pydantic
print("torch", torch.__version__, "fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "pydantic", pydantic.VERSION)
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device"
    print(torch.cuda.get_device_name(0), "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv

status=0
if [[ $STEPS == *,check,* ]]; then
echo "== gpu_check"
timeout 150 python3 -m bench.gpu_check --device "$DEVICE" --out "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.log" || status=1
fi

if [[ $STEPS == *,run,* ]]; then
echo "== bench.run"
timeout 420 python3 -m bench.run --device "$DEVICE" --servers latentserve,latentserve-nobatch \
    --loads c1,c64,c256,c16n16 --duration 5 --runs 3 --pairs 3 --limit-batches 1,8,64,256,1024 --max-batch-rows 256 \
    --out-json "$OUT/gpu-results.json" --out-md "$OUT/gpu-benchmarks.md" --log-dir /tmp/gpu-logs 2>&1 | tee "$OUT/gpu-run.log" || status=1
tail -n 40 /tmp/gpu-logs/*.log > "$OUT/server-logs.txt" 2>/dev/null
fi

if [[ $STEPS == *,replicas,* ]]; then
echo "== bench.replicas"
timeout 240 python3 -m bench.replicas --device "$DEVICE" --replicas 1,2,4,8 --concurrency 256 \
    --out-json "$OUT/gpu-replicas.json" 2>&1 | tee "$OUT/gpu-replicas.log" || status=1
fi

if [[ $STEPS == *,workers,* ]]; then
echo "== bench.replicas --workers"
timeout 200 python3 -m bench.replicas --device "$DEVICE" --workers --replicas 1,4,8 --concurrency 256 \
    --out-json "$OUT/gpu-workers.json" 2>&1 | tee "$OUT/gpu-workers.log" || status=1
fi

if [[ $STEPS == *,tests,* ]]; then
# tests whose settings come from the environment serve on the GPU, in process and as real
# uvicorn processes; the tests of CPU-only behaviour (NHWC layout) pin device=cpu themselves
echo "== API tests on $DEVICE"
LATENTSERVE_DEVICE="$DEVICE" timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/app/edge/test_api.py tests/app/engine/test_batching.py tests/app/engine/test_registry.py tests/app/edge/test_fastpath.py \
    tests/test_e2e.py tests/app/server/test_drain.py tests/app/server/test_workers.py > "$OUT/gpu-tests.log" 2>&1 || status=1
tail -n 40 "$OUT/gpu-tests.log"
fi
exit $status
