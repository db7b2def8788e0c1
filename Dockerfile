# bnlab image: API, worker and migrate all run from it (the command differs).
#   CPU (default):  docker build -t bnlab .
#   CUDA:           docker build -t bnlab:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BNLAB_DATA_DIR=/data

# g++: torch.compile (inductor) builds the fused batch-norm kernels with it on CPU.
# dataset-fashion-mnist: the real images of dataset "fashion_mnist" (in
# /usr/share/datasets/fashion-mnist; a fashion-mnist folder in BNLAB_DATA_DIR overrides it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, from the index the build argument names, so the pinned torch==2.13.0 in
# pyproject.toml is already satisfied and pip does not pull the default (CUDA) wheel.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY bncore ./bncore
COPY service ./service
COPY workers ./workers
RUN pip install -e ".[deploy]"

RUN useradd --create-home --uid 1000 bnlab && mkdir -p /data && chown bnlab /data
USER bnlab

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["bnlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
