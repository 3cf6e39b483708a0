# One image for the API and the workers; docker-compose.yml picks the command (and builds
# worker-gpu with TORCH_INDEX set to the CUDA wheels).
FROM python:3.11-slim

# CPU wheels by default. For CUDA: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TUNEFORGE_DATA_DIR=/data

WORKDIR /srv/tuneforge
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 10001 tuneforge && mkdir -p /data \
    && chown tuneforge /data
USER tuneforge
VOLUME ["/data"]
EXPOSE 8000
CMD ["tuneforge", "serve", "--host", "0.0.0.0", "--port", "8000"]
