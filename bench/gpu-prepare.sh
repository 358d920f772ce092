#!/usr/bin/env bash
# Fills what bench/gpu.sh carries to a CUDA machine that has torch but no network:
#   .whl/   the service's and the tests' Python packages it lacks, as CPython 3.12 x86-64 wheels,
#           at the versions installed in this environment (run from the project's venv);
#   .tools/ wrk (a wrapper, the binary, and the libluajit/libssl/libcrypto it links) from this host.
# Both folders are build outputs: add `/.whl/` and `/.tools/` to .git/info/exclude.
# The list is what a machine with torch, numpy, Pillow, safetensors, prometheus-client, uvloop,
# httpx, hypothesis and pytest lacks (a dry run in such a venv found opentelemetry-api and click).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
PKGS="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types
annotated-doc opentelemetry-api uvicorn httptools python-multipart typing-extensions anyio h11 idna click
pytest pytest-asyncio pluggy iniconfig"
pins=$(for p in $PKGS; do echo "$p==$("$PY" -m pip show "$p" | awk '/^Version:/{print $2}')"; done)
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl $pins
rm -rf .tools && mkdir -p .tools/lib
cp "$(command -v wrk)" .tools/wrk.bin
for lib in $(ldd .tools/wrk.bin | awk '/(luajit|libssl|libcrypto)/{print $3}'); do cp -L "$lib" .tools/lib/; done
cat > .tools/wrk <<'EOF'
#!/bin/sh
# wrk with the libraries it was linked against, for a machine without it
d=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$d/lib" exec "$d/wrk.bin" "$@"
EOF
chmod +x .tools/wrk
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)), wrk in .tools ($(du -sh .tools | cut -f1))"
