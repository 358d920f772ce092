# latentserve: CPU image by default.
#   docker build -t latentserve .
#   docker run --rm -p 127.0.0.1:8000:8000 latentserve
# CUDA build: a CUDA wheel of torch instead of the CPU one (run with --gpus all):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t latentserve:cuda .
# Air-gapped build: put the wheels in wheels/ (see wheels/README.md); nothing is then fetched, and
# TORCH_INDEX_URL is not used: keep wheels/ empty for the CUDA build.
ARG BASE_IMAGE=python:3.11-slim
# build stage: the venv, from the index or from wheels/ (which never reach the final image)
FROM ${BASE_IMAGE} AS build

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv
WORKDIR /srv/latentserve
# dependencies first, so code changes do not reinstall torch
COPY wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links /tmp/wheels "${TORCH_SPEC}"; \
    else \
        pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"; \
    fi
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links /tmp/wheels .; \
    else \
        pip install --no-cache-dir .; \
    fi \
    && rm -rf build *.egg-info

# runtime stage: the venv, the code's installed copy and the weights
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/latentserve
COPY weights ./weights

RUN useradd --system --no-create-home --uid 10001 latentserve && chmod -R a+rX /srv/latentserve
USER 10001
ENV LATENTSERVE_HOST=0.0.0.0 \
    LATENTSERVE_PORT=8000 \
    LATENTSERVE_WEIGHTS_DIR=/srv/latentserve/weights
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LATENTSERVE_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["latentserve"]
