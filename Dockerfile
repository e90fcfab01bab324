# edgenas: CPU image by default; `--build-arg VARIANT=cuda` for NVIDIA GPUs (run with --gpus all).
#   docker build -t edgenas .                          # CPU
#   docker build -t edgenas:cuda --build-arg VARIANT=cuda .
#   docker run --rm -v "$PWD/runs:/work/runs" edgenas   # the embedded demo: Fashion-MNIST, cpu-ort
# Results go to /work (mount it to keep them). Any other command: docker run edgenas search --help
FROM python:3.11-slim-bookworm

ARG VARIANT=cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1

# Fashion-MNIST ships as a Debian package (files under /usr/share/datasets/fashion-mnist). Its data
# never changes between Debian revisions, so the version is left to the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/edgenas
COPY pyproject.toml README.md ./
COPY edgenas ./edgenas
COPY hardware_profiles ./hardware_profiles

# CPU: torch's CPU-only wheels (no CUDA libraries). CUDA: the default wheels plus onnxruntime-gpu.
# torch is pinned here; the package's own dependencies are pinned by its pyproject.toml ranges.
# hadolint ignore=DL3013
RUN if [ "$VARIANT" = "cuda" ]; then \
        pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" && pip install ".[gpu]"; \
    elif [ "$VARIANT" = "cpu" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu \
            "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" && pip install .; \
    else \
        echo "VARIANT must be cpu or cuda, not $VARIANT" >&2 && exit 1; \
    fi \
    && edgenas --version

RUN useradd --create-home --uid 1000 edgenas && mkdir -p /work && chown 1000 /work
USER 1000
WORKDIR /work
ENV EDGENAS_PROFILES=/opt/edgenas/hardware_profiles

ENTRYPOINT ["edgenas"]
CMD ["run", "--profile", "cpu-ort", "--data", "fashion-mnist", "--latency-ms", "0.5", "--out", "runs/demo"]
