#!/usr/bin/env bash
# Build the image with podman from a local base image and wheels downloaded on the host (an
# air-gapped build), run it on 127.0.0.1, wait for readiness, fetch a PNG and the metrics, send
# SIGTERM and check a clean exit. Takes minutes; not part of CI.
#   bash deploy/container-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_IMAGE:-localhost/python-base:3.11}
TAG=${TAG:-localhost/latentserve:smoke}
PORT=${PORT:-18000}
PY=${PYTHON:-python3}

# this project's machines build the local base image with a shared helper; elsewhere pull one and
# pass it: BASE_IMAGE=docker.io/library/python:3.11-slim bash deploy/container-smoke.sh
if [ -f ../shared/tools/podman-base-image.sh ]; then bash ../shared/tools/podman-base-image.sh; fi
# wheels/ switches the Dockerfile to offline installs: left there (by a failed download or build
# too), a later CUDA build would take this CPU torch instead of TORCH_INDEX_URL's
CID=
trap 'rm -f wheels/*.whl; if [ -n "$CID" ]; then podman rm -f "$CID" >/dev/null 2>&1 || true; fi' EXIT
echo "== wheels for an offline build (host)"
# the base image's python is Debian bookworm's 3.11, like the host's: wheels for the project, its
# dependencies (torch pinned to the CPU build) and the build backend
"$PY" -m pip wheel --quiet --wheel-dir wheels "torch==2.13.0" setuptools wheel .
echo "== build (no network inside)"
podman build --pull=never --network=none --build-arg BASE_IMAGE="$BASE" -t "$TAG" .
rm -f wheels/*.whl
echo "== run"
CID=$(podman run -d --init -p 127.0.0.1:$PORT:8000 "$TAG")
for i in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo
curl -fsS -o /tmp/smoke.png "http://127.0.0.1:$PORT/v1/models/fashion-gan/samples.png?seed=1&label=Bag"
# each check fails the script: under set -e, a failing command before && does not
fail() { echo "FAILED: $1"; exit 1; }
file /tmp/smoke.png | grep -q "PNG image data, 28 x 28" || fail "not a 28x28 PNG"
echo "PNG ok"
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -q '^latentserve_ready 1.0' || fail "not ready in /metrics"
echo "metrics ok"
# the playground's static files ship in the installed package
curl -fsS "http://127.0.0.1:$PORT/" | grep -q 'playground/app.js' || fail "no playground page"
curl -fsS "http://127.0.0.1:$PORT/playground/app.js" | grep -q 'AbortController' || fail "no playground script"
echo "playground ok"
[ "$(podman inspect -f '{{.Config.User}}' "$CID")" = "10001" ] || fail "the container does not run as uid 10001"
echo "non-root ok"
podman kill --signal TERM "$CID" >/dev/null
STATUS=$(podman wait "$CID")
echo "exit status after SIGTERM: $STATUS"
[ "$STATUS" = "0" ]
echo "container smoke test passed"
